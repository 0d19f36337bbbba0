/**
 * The terminal of `tally dev`: the banner, warnings (one line each, on stderr) and a live status line.
 * On a TTY the status line is redrawn in place every few seconds and stays below everything else; on
 * anything else (a pipe, a file, CI) a status line is printed at most every 30 seconds, and only when
 * it changed.
 */

type Stream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

/** How often the status is refreshed on a TTY, and at most how often it is printed elsewhere. */
const TTY_EVERY_MS = 2000;
const PIPE_EVERY_MS = 30_000;

export class DevTerminal {
  #status = "";
  #shown = false;
  #timer: NodeJS.Timeout | undefined;
  #lastPrinted = "";

  constructor(
    private readonly stdout: Stream,
    private readonly stderr: Stream,
  ) {}

  /** Whether stdout is a terminal (the status line is redrawn in place). */
  get tty(): boolean {
    return this.stdout.isTTY === true;
  }

  /** Prints text (ending in a newline) on stdout, above the status line. */
  print(text: string): void {
    this.#clear();
    this.stdout.write(text);
    this.#draw();
  }

  /** Prints one line on stderr (a warning, an error), above the status line. */
  note(line: string): void {
    this.#clear();
    this.stderr.write(`${line}\n`);
    this.#draw();
  }

  /**
   * Refreshes the status line from `read` (every 2 s on a TTY, at most every 30 s elsewhere) until
   * `stopStatus`. A failing `read` keeps the last status.
   */
  startStatus(read: () => Promise<string>): void {
    this.stopStatus();
    let busy = false;
    const tick = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      try {
        this.#update(await read());
      } catch {
        // The stack is stopping or a dependency is down: the status stays as it was.
      } finally {
        busy = false;
      }
    };
    this.#timer = setInterval(() => void tick(), this.tty ? TTY_EVERY_MS : PIPE_EVERY_MS);
    this.#timer.unref();
    void tick();
  }

  /** Stops refreshing and removes the status line from a TTY. */
  stopStatus(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#clear();
    this.#status = "";
  }

  #update(status: string): void {
    if (this.tty) {
      this.#status = status;
      this.#clear();
      this.#draw();
    } else if (status !== this.#lastPrinted) {
      this.#lastPrinted = status;
      this.stdout.write(`${status}\n`);
    }
  }

  #draw(): void {
    if (!this.tty || this.#status === "") return;
    const width = Math.max(20, (this.stdout.columns || 100) - 1); // a pty without a size reports 0
    this.stdout.write(this.#status.length > width ? `${this.#status.slice(0, width - 1)}…` : this.#status);
    this.#shown = true;
  }

  #clear(): void {
    if (!this.#shown) return;
    this.stdout.write("\r\x1b[2K");
    this.#shown = false;
  }
}
