/** Reads server-sent events from a live response until `count` arrived. */
export async function readEvents(
  res: Response,
  count: number,
  timeoutMs = 20_000,
): Promise<Array<{ id: string | null; event: string; data: string }>> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: Array<{ id: string | null; event: string; data: string }> = [];
  let buffer = "";
  const deadline = Date.now() + timeoutMs;
  while (events.length < count) {
    const chunk = await Promise.race([
      reader.read(),
      new Promise<never>((_, rej) =>
        setTimeout(() => rej(new Error(`only ${events.length} of ${count} events`)), Math.max(1, deadline - Date.now())),
      ),
    ]);
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let sep: number;
    while ((sep = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      const fields = Object.fromEntries(
        block
          .split("\n")
          .filter((l) => l && !l.startsWith(":"))
          .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trimStart()]),
      );
      if (fields.data !== undefined) events.push({ id: fields.id ?? null, event: fields.event ?? "message", data: fields.data });
    }
  }
  await reader.cancel().catch(() => {});
  return events;
}
