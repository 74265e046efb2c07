// Tests start loaders the same way the demo and the benchmark do.
export * from '../../src/testbed/loader.ts';
export { eventually } from './wait.ts';
