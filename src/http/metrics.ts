import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type HistogramConfiguration } from "prom-client";
import type { ReservationMetrics } from "../reservations/index.ts";

export interface ApiMetricsDeps {
  /** The process's registry (its roles' metrics and the standard process metrics); a fresh one when absent. */
  readonly registry?: Registry;
}

/**
 * The API's own Prometheus metrics: what this API process received, published and answered. They are
 * added to the process's registry (src/app/processMetrics.ts), which `/metrics` serves; an app built
 * without one (a test) gets a registry of its own with the standard process metrics.
 */
export class ApiMetrics {
  readonly registry: Registry;
  readonly commandsIn: Counter<"type" | "source">;
  readonly reservations: Counter<"outcome">;
  readonly reservationLatency: Histogram<"outcome">;
  readonly posTransactions: Counter<"outcome" | "via">;
  readonly httpDuration: Histogram<"method" | "route" | "status">;
  readonly holdLag: Gauge;

  constructor(deps: ApiMetricsDeps) {
    this.registry = deps.registry ?? ownRegistry();
    const registers = [this.registry];
    this.commandsIn = counter({
      name: "tally_commands_in_total",
      help: "Commands this API process published (POS, reservations), by type and source",
      labelNames: ["type", "source"],
      registers,
    });
    this.reservations = counter({
      name: "tally_reservations_total",
      help: "Reservation requests and transitions this API process handled, by outcome (shed: refused at once, the apply path behind)",
      labelNames: ["outcome"],
      registers,
    });
    this.reservationLatency = histogram({
      name: "tally_reservation_decision_seconds",
      help: "Time from a reservation request to the actors' decision, in this API process",
      labelNames: ["outcome"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.posTransactions = counter({
      name: "tally_pos_transactions_total",
      help: "POS transactions this API process received, by outcome and transport",
      labelNames: ["outcome", "via"],
      registers,
    });
    // The gauge reads the latest app's reservation service (an app rebuilt on the same registry replaces it).
    const lag = holdLagSource(this.registry);
    this.holdLag =
      (this.registry.getSingleMetric("tally_reservation_hold_lag_seconds") as Gauge | undefined) ??
      new Gauge({
        name: "tally_reservation_hold_lag_seconds",
        help: "The largest partition's hold lag in this API process (how long its holds take to be decided); above TALLY_RESERVATION_SHED_LAG_MS new holds there are shed",
        registers,
        collect() {
          this.set(lag.read());
        },
      });
    this.httpDuration = histogram({
      name: "tally_http_request_duration_seconds",
      help: "HTTP request duration by method, route and status",
      labelNames: ["method", "route", "status"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers,
    });
  }

  /** The reservation service's metrics hooks, on this registry. */
  forReservations(): ReservationMetrics {
    return {
      observeDecision: (outcome, seconds) => this.reservationLatency.observe({ outcome }, seconds),
      count: (outcome) => this.reservations.inc({ outcome }),
      commandPublished: (type, source) => this.commandsIn.inc({ type, source }),
      holdLag: (source) => {
        holdLagSource(this.registry).read = source;
      },
    };
  }
}

const holdLagSources = new WeakMap<Registry, { read: () => number }>();
/** Where a registry's hold-lag gauge reads from: one holder per registry, set by the latest reservation service. */
function holdLagSource(registry: Registry): { read: () => number } {
  let source = holdLagSources.get(registry);
  if (!source) holdLagSources.set(registry, (source = { read: () => 0 }));
  return source;
}

/**
 * The registry's counter of that name, or a new one: an app built again on the same registry (a restart
 * in the same process) keeps counting in the same metrics.
 */
const counter = <L extends string>(config: CounterConfiguration<L> & { registers: Array<Registry> }): Counter<L> =>
  (config.registers[0]!.getSingleMetric(config.name) as Counter<L> | undefined) ?? new Counter<L>(config);

/** The registry's histogram of that name, or a new one (as `counter`). */
const histogram = <L extends string>(config: HistogramConfiguration<L> & { registers: Array<Registry> }): Histogram<L> =>
  (config.registers[0]!.getSingleMetric(config.name) as Histogram<L> | undefined) ?? new Histogram<L>(config);

/** A registry with the standard process metrics (as src/app/processMetrics.ts registers them: no `_total` gauges). */
function ownRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"])
    registry.removeSingleMetric(name);
  return registry;
}
