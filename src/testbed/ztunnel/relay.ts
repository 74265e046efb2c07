// Byte-counting bidirectional relay between a downstream connection and an upstream one, with
// half-close passed through, reporting once when both sides are finished.
import type { Duplex } from 'node:stream';

export interface RelayResult {
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly error: string | undefined;
}

/** Pipes down<->up; bytesIn counts client->server bytes, bytesOut server->client. */
export function relay(down: Duplex, up: Duplex): Promise<RelayResult> {
  let bytesIn = 0;
  let bytesOut = 0;
  let error: string | undefined;
  down.on('data', (b: Buffer) => (bytesIn += b.length));
  up.on('data', (b: Buffer) => (bytesOut += b.length));
  down.pipe(up);
  up.pipe(down);
  return new Promise((resolve) => {
    let open = 2;
    const done = (): void => {
      if (--open === 0) resolve({ bytesIn, bytesOut, error });
    };
    const onError = (side: string) => (e: Error) => {
      error ??= `${side}: ${(e as NodeJS.ErrnoException).code ?? e.message}`;
      down.destroy();
      up.destroy();
    };
    down.on('error', onError('downstream'));
    up.on('error', onError('upstream'));
    down.once('close', done);
    up.once('close', done);
  });
}
