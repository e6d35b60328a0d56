// Server-sent events read with fetch (so the request can carry the Authorization header, which
// EventSource cannot): parses the event stream, remembers the last id, reconnects with
// Last-Event-ID when the server ends the response (it does every ~15 s) or the network fails.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function startLive({url, headers, onEvent, onStatus}) {
  let last = null;
  let stopped = false;
  let backoff = 1000;

  function dispatch(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') last = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) onEvent(event, data.join('\n'));
  }

  async function run() {
    while (!stopped) {
      try {
        const head = {Accept: 'text/event-stream', ...headers()};
        if (last !== null) head['Last-Event-ID'] = last;
        const resp = await fetch(url, {headers: head, cache: 'no-store'});
        if (resp.status === 401 || resp.status === 403) {
          onStatus('auth');
          await sleep(5000);
          continue;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        onStatus('live');
        backoff = 1000;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            dispatch(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (err) {
        onStatus('offline');
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
  }

  run();
  return {stop() { stopped = true; }};
}
