// Route libbpf's own messages (printf-style with a va_list) into our logger instead of raw stderr.
// On x86-64 a va_list argument is one pointer: the callback takes it as `void *` and hands it to
// vsnprintf once (a va_list is consumed by use). The callback stays registered for the process.
import { koffi, raw, libcRaw } from './ffi.ts';
import { logger } from '../log.ts';

const log = logger('libbpf');
const LIBBPF_WARN = 0;
const LIBBPF_INFO = 1;

let installed = false;

export function installLibbpfPrint(): void {
  if (installed || process.arch !== 'x64') return;
  installed = true;
  const proto = koffi.proto('int ambpf_libbpf_print_fn(int level, void *fmt, void *args)');
  const buf = Buffer.alloc(4096);
  const cb = koffi.register((level: number, fmt: unknown, args: unknown): number => {
    const n = libcRaw.vsnprintf(buf, buf.length, fmt, args) as number;
    const text = buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1))).trimEnd();
    if (!text) return 0;
    if (level === LIBBPF_WARN) log.warn(text);
    else if (level === LIBBPF_INFO) log.debug(text);
    else log.trace(text);
    return 0;
  }, koffi.pointer(proto));
  raw.libbpf_set_print(cb);
}
