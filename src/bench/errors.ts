// Failures of the benchmark harness: a tool that did not start, a sink that never listened, a load
// that produced no numbers. Each names the cell (path, workload, round) so a broken run says where.
import { AmbpfError, type AmbpfErrorContext } from '../errors.ts';

export class BenchError extends AmbpfError {
  override readonly name: string = 'BenchError';
  constructor(message: string, context: AmbpfErrorContext = {}, options: { cause?: unknown } = {}) {
    super(message, context, options);
  }
}
