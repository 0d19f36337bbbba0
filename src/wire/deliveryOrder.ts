import type { JsMsg } from "@nats-io/jetstream";

/**
 * Deliveries a consumer skipped: the server counts them as delivered, this client never got them.
 * It happens when the connection drops (or nats-server restarts) with messages on the wire. Under
 * `AckPolicy.All`, acknowledging any later message would acknowledge the missing ones too, and they
 * would be lost without a trace; so whoever sees this must stop, and read again from what it has
 * durably handled.
 */
export class DeliveryGap extends Error {
  constructor(
    readonly consumer: string,
    /** The delivery sequence that should have come next. */
    readonly expected: number,
    /** The delivery sequence that came instead. */
    readonly got: number,
    /** The stream sequence of the message that came instead. */
    readonly streamSeq: number,
  ) {
    super(
      got > expected
        ? `consumer ${consumer} skipped deliveries ${expected}..${got - 1} (lost in transit); reading again from the last handled message`
        : `consumer ${consumer} went back to delivery ${got} after ${expected - 1} (its state on the server went back, e.g. after a restart); reading again from the last handled message`,
    );
    this.name = "DeliveryGap";
  }
}

/**
 * Checks that one consumer's messages arrive with consecutive delivery sequences (1, 2, 3, …: every
 * delivery, redeliveries included, takes the next one). Keep one per consumer instance.
 */
export class DeliveryOrder {
  #last = 0;

  /** The gap `m` reveals, or null when it is the next delivery (it then becomes the last one). */
  next(m: JsMsg): DeliveryGap | null {
    const seq = m.info.deliverySequence;
    if (seq !== this.#last + 1) return new DeliveryGap(m.info.consumer, this.#last + 1, seq, m.seq);
    this.#last = seq;
    return null;
  }
}
