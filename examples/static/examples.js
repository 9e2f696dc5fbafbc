// The examples' connection badge, shared by their pages (served from
// examples/static, no build step). The badge is an element with class "state";
// its data-state (styled by examples.css) and text are one of:
//   connecting            the first connection is being made
//   live                  the stream is open
//   reconnecting          it dropped; the browser reconnects by itself
//   replayed N missed     it came back, and the server replayed the N events
//                         published while it was away (Last-Event-ID)
// After a few seconds "replayed N missed" settles to "live".
//
// A stream does not mark where its replay ends: the server writes the missed
// events at once, right after the reconnection opens, so the events that arrive
// within REPLAY_WINDOW_MS of that are counted as replayed. An event published
// live in that same instant would be counted too; for a badge that is fine.

const REPLAY_WINDOW_MS = 300;
const REPLAYED_SHOWN_MS = 8000;

class ConnectionBadge {
  constructor(element) {
    this.element = element;
    this.dropped = false;
    this.replayUntil = 0;
    this.replayed = 0;
    this.settle = null;
    this.set("connecting");
  }

  set(state, text = state) {
    this.element.dataset.state = state;
    this.element.textContent = text;
  }

  opened() {
    clearTimeout(this.settle);
    this.replayed = 0;
    this.replayUntil = this.dropped ? performance.now() + REPLAY_WINDOW_MS : 0;
    this.set("live");
  }

  closed() {
    this.dropped = true;
    this.replayUntil = 0;
    this.set("reconnecting");
  }

  received() {
    if (performance.now() > this.replayUntil) return;
    this.replayed += 1;
    this.set("replayed", `replayed ${this.replayed} missed`);
    clearTimeout(this.settle);
    this.settle = setTimeout(() => this.set("live"), REPLAYED_SHOWN_MS);
  }

  // Wire the badge to an EventSource; eventTypes are the types the page shows.
  watch(source, eventTypes = ["message"]) {
    source.addEventListener("open", () => this.opened());
    source.addEventListener("error", () => this.closed());
    for (const type of eventTypes) {
      source.addEventListener(type, () => this.received());
    }
    return this;
  }
}
