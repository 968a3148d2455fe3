// Server-sent events over fetch streaming: turns a Response body into the `data` of each
// event. Works in browsers and in node >= 18 (both have ReadableStream and TextDecoder).

/**
 * Yields the data of each event of an SSE body (multi-line `data:` fields joined by "\n").
 * Comment lines (`:` keep-alives) and other fields are skipped. Ends when the body ends.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<string>}
 */
export async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let data = [];
  const takeLine = (line) => {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line === '') {
      const event = data.length ? data.join('\n') : null;
      data = [];
      return event;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    return null;
  };
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const event = takeLine(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (event !== null) yield event;
      }
    }
    buffer += decoder.decode();
    if (buffer) {
      const event = takeLine(buffer);
      if (event !== null) yield event;
    }
    if (data.length) yield data.join('\n');
  } finally {
    reader.releaseLock();
  }
}

/**
 * Streams an OpenAI-style chat completion: calls `onChunk(chunk)` for every JSON chunk and
 * returns when `[DONE]` arrives. An `{"error": ...}` event throws with its message; a body
 * that ends without `[DONE]` throws too (the stream was cut).
 */
export async function readChatStream(body, onChunk) {
  for await (const data of sseData(body)) {
    if (data === '[DONE]') return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      throw new Error(`the gateway sent an event that is not JSON: ${data.slice(0, 200)}`);
    }
    if (chunk.error) throw new Error(chunk.error.message ?? JSON.stringify(chunk.error));
    onChunk(chunk);
  }
  throw new Error('the stream ended before [DONE]');
}
