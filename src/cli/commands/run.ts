// `ambpf run`: load and pin the datapath, then keep its maps in step with the pods of this node,
// from a pods file or the Kubernetes API. SIGTERM/SIGINT stop the watch and leave every pin in
// place: traffic keeps flowing while the loader is down or being upgraded.
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Command } from '../command.ts';
import { UsageError, describeError } from '../../errors.ts';
import { logger } from '../../log.ts';
import { mountsOf } from '../../doctor/system.ts';
import type { PodSource } from '../../sources/types.ts';
import type { DatapathMaps } from '../../bpf/datapath-maps.ts';
import type { InpodDatapath } from '../../bpf/datapath-inpod.ts';
import type { Topology } from '../../reconcile/topology.ts';
import type { ZtunnelHandoff } from '../../reconcile/topology-inpod.ts';

const log = logger('run');

/** How often the loader walks its maps for fill and failed inserts (metrics, log lines). */
const MAP_REFRESH_MS = 10_000;

const USAGE = `Usage: ambpf run [--node N] (--pods-file F | --kubeconfig F | --in-cluster) [options]

Loads ambpf's programs, pins maps and links under --bpffs, attaches them to the pods' cgroup, and
keeps the ambient-pod and ztunnel maps in sync with the pods of this node.

Pod source (one of):
  --pods-file F        a Kubernetes List of Pods and Namespaces (JSON or YAML), re-read on change
  --kubeconfig F       watch the API server named in this kubeconfig
  --in-cluster         watch the API server with the pod's service account
Options:
  --node N             this node's name (default: $NODE_NAME, else the hostname)
  --mode inpod|node    where ztunnel listens: inpod (default) = inside every mesh pod's netns, as every
                       ztunnel since Istio 1.23 does; ambpf captures each pod there (nothing in the
                       node netns) and hands it to ztunnel over ZDS. node = ztunnel in its own pod
                       (ztunnel <= 1.22, the seed's topology)
  --zds-socket PATH    inpod: the ZDS socket ztunnel connects to (default
                       /var/run/ztunnel/ztunnel.sock; ztunnel's INPOD_UDS). \`none\`: no ZDS server,
                       ztunnel is expected to open its listeners in the pods by itself (testing)
  --cni-socket PATH    inpod: serve the chained CNI plugin ambpf-cni on this unix socket: its ADD of an
                       ambient pod returns only once the pod is captured and ztunnel acked it
  --cni-timeout-ms N   how long a CNI ADD may wait for the capture and ztunnel's ack (default 10000)
  --cni-grace-ms N     a pod CNI ADD captured that the pod source never shows is released after this
                       long (default 60000); what ADD captured is kept in cni-pods.json beside
                       --state-file, so a restarted loader keeps it captured
  --fail-open          inpod: a captured pod whose ztunnel is away or has not taken it talks direct.
                       Off by default: its connections are refused both ways, as with Istio, because
                       direct traffic would bypass the mesh's mTLS and policy
  --no-dns-capture     inpod: leave DNS (UDP/TCP port 53) alone unless a pod's annotation
                       ambient.istio.io/dns-capture is "true". Default: captured to ztunnel's
                       localhost:15053, unless the annotation is "false" (ztunnel's DNS proxy must be on)
  --bpffs DIR          pin directory (default /sys/fs/bpf/ambpf)
  --cgroup DIR         cgroup v2 directory holding the pods (default: kubelet's kubepods under the
                       cgroup v2 mount found in /proc/mounts)
  --listen HOST:PORT   /healthz /readyz /metrics (default 127.0.0.1:15099; port 0 = ephemeral; the
                       DaemonSet passes 0.0.0.0:15099 for Prometheus). /healthz is 503 with the reason
                       when the watch is silent past twice --watch-stale-ms, a pin under --bpffs is
                       missing, or (inpod) the ZDS socket is gone
  --state-file F       pod names for \`ambpf pods\` (default /run/ambpf/state.json); next to it the ledger
                       of what ambpf changed outside --bpffs (sysctls, routes), for \`ambpf uninstall\`
  --exclude-ports P,.. destination ports never redirected (at most 16)
  --node-ip IP,..      the node's own IPs: never redirected
  --splice             splice same-node pod<->ztunnel sockets through the sockhash (sockops +
                       sk_msg) for directions whose first write is >= 16 KiB. Off by default: measured
                       here it never won and a socket in a sockhash pays the sk_msg path on every
                       write (0.5x at 1 KiB writes); see BENCHMARKS.md
  --no-splice          the default (kept for scripts)
  --max-pods N         size of the per-pod maps when created: ambpf_pods and ambpf_netns N entries
                       (default 16384), ambpf_inpod_listen 4 N. \`ambpf doctor\` compares it with the
                       node's pod capacity
  --map-sizes M=N,..   max_entries of any sized map when created, e.g. ambpf_pair_dst=131072
                       (docs/maps.md lists them, their defaults and what happens when one is full)
  --resync-ms N        re-check pods that were not resolvable, and ztunnel's listeners (default 2000)
  --watch-stale-ms N   relist when the Kubernetes watch heard no event or bookmark for this long
                       (default 180000)
  --watch-backoff-max-ms N
                       cap of the exponential backoff between watch restarts (default 30000)
  --no-idle-trim       keep what a burst of work left resident. Default: once startup is over, and 5 s
                       after the last pass of each later burst, give back glibc's free heap pages and
                       unmap the node binary's clean pages (they fault back from the page cache when
                       used): ~30 MiB less RSS
`;

function defaultCgroup(): string {
  const roots = mountsOf('cgroup2');
  for (const root of roots) {
    for (const name of ['kubepods.slice', 'kubepods']) {
      const dir = join(root, name);
      if (existsSync(dir)) return dir;
    }
  }
  throw new UsageError(
    roots.length === 0
      ? 'no cgroup v2 mount found in /proc/mounts; ambpf needs cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup)'
      : `no kubepods cgroup under ${roots.join(', ')}; pass --cgroup with the directory that holds the pods`,
  );
}

function csv(value: string | undefined): string[] {
  return value
    ? value
        .split(',')
        .map((v) => v.trim())
        .filter(Boolean)
    : [];
}

export const command: Command = {
  summary: 'load, pin and attach the datapath, then keep the maps in sync with pods',
  usage: USAGE,
  async run(argv) {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        node: { type: 'string' },
        'pods-file': { type: 'string' },
        kubeconfig: { type: 'string' },
        'in-cluster': { type: 'boolean' },
        mode: { type: 'string', default: 'inpod' },
        'zds-socket': { type: 'string', default: '/var/run/ztunnel/ztunnel.sock' },
        'fail-open': { type: 'boolean' },
        'no-dns-capture': { type: 'boolean' },
        'cni-socket': { type: 'string' },
        'cni-timeout-ms': { type: 'string' },
        'cni-grace-ms': { type: 'string' },
        bpffs: { type: 'string', default: '/sys/fs/bpf/ambpf' },
        cgroup: { type: 'string' },
        listen: { type: 'string', default: '127.0.0.1:15099' },
        'state-file': { type: 'string', default: '/run/ambpf/state.json' },
        'exclude-ports': { type: 'string' },
        'node-ip': { type: 'string' },
        'no-splice': { type: 'boolean' },
        splice: { type: 'boolean' },
        'resync-ms': { type: 'string', default: '2000' },
        'watch-stale-ms': { type: 'string' },
        'watch-backoff-max-ms': { type: 'string' },
        'max-pods': { type: 'string' },
        'map-sizes': { type: 'string' },
        'no-idle-trim': { type: 'boolean' },
      },
      strict: true,
    });
    const sources = [
      values['pods-file'] !== undefined,
      values.kubeconfig !== undefined,
      values['in-cluster'] === true,
    ].filter(Boolean).length;
    if (sources !== 1)
      throw new UsageError('pass exactly one pod source: --pods-file F, --kubeconfig F or --in-cluster');
    if (values.mode !== 'node' && values.mode !== 'inpod')
      throw new UsageError(`--mode must be node or inpod, not '${values.mode}'`);
    const excludedPorts = csv(values['exclude-ports']).map((p) => {
      const n = Number(p);
      if (!Number.isInteger(n) || n < 1 || n > 65535)
        throw new UsageError(`--exclude-ports: '${p}' is not a port number`);
      return n;
    });
    const maxPods = values['max-pods'] === undefined ? undefined : Number(values['max-pods']);
    if (maxPods !== undefined && (!Number.isInteger(maxPods) || maxPods < 1))
      throw new UsageError('--max-pods must be a positive integer');
    const resyncMs = Number(values['resync-ms']);
    if (!Number.isFinite(resyncMs) || resyncMs < 100) throw new UsageError('--resync-ms must be a number >= 100');
    const msFlag = (
      name: 'watch-stale-ms' | 'watch-backoff-max-ms' | 'cni-timeout-ms' | 'cni-grace-ms',
    ): number | undefined => {
      const v = values[name];
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isFinite(n) || n < 100) throw new UsageError(`--${name} must be a number >= 100`);
      return n;
    };
    const staleAfterMs = msFlag('watch-stale-ms');
    const cniTimeoutMs = msFlag('cni-timeout-ms');
    const cniGraceMs = msFlag('cni-grace-ms');
    if (values['cni-socket'] !== undefined && (values.mode !== 'inpod' || values['zds-socket'] === 'none')) {
      throw new UsageError("--cni-socket needs --mode inpod with a ZDS socket: ADD waits for ztunnel's ack");
    }
    const backoffMaxMs = msFlag('watch-backoff-max-ms');

    // Heavy modules load only now: `ambpf run --help` stays instant.
    const { resolveNodeName } = await import('../../kube/node-name.ts');
    const { openDatapath } = await import('../../bpf/datapath.ts');
    const { defaultConfig, CFG_SPLICE, CFG_INPOD, CFG_FAIL_OPEN, CFG_NO_DNS_CAPTURE } =
      await import('../../bpf/schema.ts');
    const { Reconciler } = await import('../../reconcile/reconciler.ts');
    const { ResyncPolicy } = await import('../../reconcile/resync.ts');
    const { createMetricsRegistry } = await import('../../metrics/registry.ts');
    const { startHttpServer } = await import('../../server/http.ts');
    const { canonicalIp } = await import('../../ip.ts');

    const nodeIps = csv(values['node-ip']).map((ip) => {
      const c = canonicalIp(ip);
      if (!c) throw new UsageError(`--node-ip: '${ip}' is not an IP address`);
      return c;
    });
    const node = resolveNodeName({ flag: values.node });
    const cgroup = values.cgroup ?? defaultCgroup();

    let source: PodSource;
    let annotator: import('../../agent/annotate.ts').KubePodAnnotator | undefined;
    let watchCounters: (() => { watchRestarts: number; lastEventAt: number | undefined }) | undefined;
    let watchStaleMs: number | undefined;
    if (values['pods-file'] !== undefined) {
      const { createPodsFileSource } = await import('../../sources/pods-file.ts');
      source = createPodsFileSource({ path: values['pods-file'] });
    } else {
      const { loadKubeConfig } = await import('../../kube/config.ts');
      const { createKubeSource, KUBE_SOURCE_DEFAULTS } = await import('../../sources/kube.ts');
      watchStaleMs = staleAfterMs ?? KUBE_SOURCE_DEFAULTS.staleAfterMs;
      const kubeConfig = loadKubeConfig({ kubeconfig: values.kubeconfig, inCluster: values['in-cluster'] });
      const kube = createKubeSource({ kubeConfig, nodeName: node, staleAfterMs, backoffMaxMs });
      if (values.mode === 'inpod') {
        // istiod sends HBONE only to pods annotated `enabled` (the only write ambpf makes to the API).
        const { KubePodAnnotator } = await import('../../agent/annotate.ts');
        annotator = new KubePodAnnotator({ kubeConfig, log: logger('annotate') });
      }
      watchCounters = () => kube.counters();
      source = kube;
    }

    const { mapSizesFrom, MapMonitor } = await import('../../metrics/map-health.ts');
    let mapSizes: Record<string, number>;
    try {
      mapSizes = mapSizesFrom(maxPods, values['map-sizes']);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    // What it changes outside bpffs (sysctls, routes) is recorded next to the state file, for uninstall.
    const { ledgerPath } = await import('../../bpf/sysctl.ts');
    const ledger = ledgerPath(values.bpffs, dirname(values['state-file']));
    // The topology wraps its datapath: the reconciler sees the Topology contract only.
    let datapath: { readonly maps: DatapathMaps; readonly links: object; close(): void };
    let topologyWith: (handoff: ZtunnelHandoff | undefined) => Topology;
    let inpodMaps: InpodDatapath['inpodMaps'] | undefined;
    if (values.mode === 'inpod') {
      const dp = await (
        await import('../../bpf/datapath-inpod.ts')
      ).openInpodDatapath({ bpffs: values.bpffs, cgroup, mapSizes, ledger });
      const { InpodTopology } = await import('../../reconcile/topology-inpod.ts');
      datapath = dp;
      inpodMaps = dp.inpodMaps;
      topologyWith = (handoff) => new InpodTopology(dp, { handoff });
    } else {
      const dp = await openDatapath({ bpffs: values.bpffs, cgroup, mapSizes, ledger });
      const { NodeTopology } = await import('../../reconcile/topology-node.ts');
      datapath = dp;
      topologyWith = () => new NodeTopology(dp);
    }
    const config = defaultConfig({ excludedPorts, nodeIps });
    if (values.splice && values['no-splice']) throw new UsageError('--splice and --no-splice exclude each other');
    // The splice is opt-in: with it off, sockops does not even put sockets in the sockhash.
    config.flags = values.splice ? config.flags | CFG_SPLICE : config.flags & ~CFG_SPLICE;
    // The inpod programs act only with this flag: one topology per node, whatever objects are loaded.
    if (values.mode === 'inpod') config.flags |= CFG_INPOD;
    if (values['fail-open']) {
      if (values.mode !== 'inpod') throw new UsageError('--fail-open applies to --mode inpod only');
      config.flags |= CFG_FAIL_OPEN;
      log.warn('--fail-open: a captured pod whose ztunnel is away talks direct, outside the mesh');
    }
    if (values['no-dns-capture']) {
      if (values.mode !== 'inpod') throw new UsageError('--no-dns-capture applies to --mode inpod only');
      config.flags |= CFG_NO_DNS_CAPTURE;
    }
    datapath.maps.config.set(config);

    // inpod: ambpf is the node agent ztunnel takes its pods from (ZDS). Started before the first pass,
    // so the pods armed by it are handed over as soon as a ztunnel connects.
    let handoff: import('../../agent/handoff.ts').ZdsHandoff | undefined;
    let resync: import('../../reconcile/resync.ts').ResyncPolicy | undefined;
    let cni: import('../../agent/cni.ts').CniServer | undefined;
    if (values.mode === 'inpod' && values['zds-socket'] !== 'none') {
      const { ZdsHandoff } = await import('../../agent/handoff.ts');
      const { ztunnelCgroupFile } = await import('../../agent/ztunnel-cgroup.ts');
      handoff = await ZdsHandoff.start({
        socketPath: values['zds-socket'],
        log: logger('zds'),
        annotator,
        onChange: (uid) => {
          cni?.wake();
          resync?.now(uid);
        },
        onPeer: () => resync?.rescanNow(),
        onPeerGone: () => resync?.now(),
        cgroup: { attach: cgroup, file: ztunnelCgroupFile(values['state-file']) },
      });
      log.info({ socket: values['zds-socket'] }, 'serving ZDS: waiting for ztunnel to connect');
    }

    const reconciler = new Reconciler({
      node,
      topology: topologyWith(handoff),
      stateFile: values['state-file'],
      netnsHints: () => cni?.netnsHints() ?? new Map(),
    });
    // Passes no source announces (retries, the safety net, ZDS events): src/reconcile/resync.ts.
    resync = new ResyncPolicy(reconciler, { intervalMs: resyncMs });
    if (values['cni-socket'] !== undefined && handoff) {
      const { CniServer } = await import('../../agent/cni.ts');
      cni = await CniServer.start({
        socketPath: values['cni-socket'],
        node,
        log: logger('cni'),
        handoff,
        timeoutMs: cniTimeoutMs,
        graceMs: cniGraceMs,
        stateFile: join(dirname(values['state-file']), 'cni-pods.json'),
        reconcile: (snapshot) => reconciler.reconcile(snapshot),
      });
    }
    let ready = false;
    // Map fill is walked here, on the loader's clock, and logged when a map fills or inserts fail;
    // /metrics reads the last figures (a scrape never walks a map).
    const allMaps = {
      ...datapath.maps.raw,
      ...(inpodMaps
        ? {
            ambpf_inpod_closed: inpodMaps.closed,
            ambpf_inpod_listen: inpodMaps.listen,
            ambpf_inpod_origsrc: inpodMaps.origsrc,
            ambpf_inpod_nodesyn: inpodMaps.nodesyn,
            ambpf_inpod_sk: inpodMaps.sk,
            ambpf_inpod_dns: inpodMaps.dns,
          }
        : {}),
    };
    const mapMonitor = new MapMonitor({
      maps: () => allMaps,
      stats: () => datapath.maps.stats(),
      loaderFailures: () => reconciler.stats.mapFullByMap,
      loaderGeneration: () => reconciler.stats.passes,
    });
    mapMonitor.refresh();
    const mapTimer = setInterval(() => {
      try {
        mapMonitor.refresh();
      } catch (err) {
        log.error({ err: describeError(err) }, 'reading map fill failed');
      }
    }, MAP_REFRESH_MS);
    mapTimer.unref();
    const registry = createMetricsRegistry({
      maps: () => datapath.maps,
      reconcile: () => reconciler.stats,
      watch: watchCounters,
      mapMonitor,
      ztunnelCgroups: handoff ? () => handoff.ztunnelCgroups() : undefined,
    });
    const { healthProblems } = await import('../../server/health.ts');
    const { linkPin, mapPin } = await import('../../bpf/pins.ts');
    const { MAP_NAMES } = await import('../../bpf/names.ts');
    const pins = [
      ...Object.keys(datapath.links).map((hook) => linkPin(values.bpffs, hook)),
      ...MAP_NAMES.map((m) => mapPin(values.bpffs, m)),
    ];
    let lastProblems = '';
    const { server } = await startHttpServer(
      values.listen,
      {
        ready: () => ready,
        notReadyReason: () => (source.health().synced ? 'first reconcile not finished' : 'pod source not synced yet'),
        problems: () => {
          const problems = healthProblems({
            source: () => source.health(),
            staleAfterMs: watchStaleMs,
            pins: () => pins,
            zds: handoff ? () => handoff.serverProblem() : undefined,
          });
          // Said once per change, not on every probe.
          const line = problems.join('; ');
          if (line !== lastProblems) {
            if (line) log.error({ problems }, `unhealthy: ${line}`);
            else if (lastProblems) log.info('healthy again');
            lastProblems = line;
          }
          return problems;
        },
      },
      registry,
    );

    let idleTrim: import('../idle-trim.ts').IdleTrim | undefined;
    let stopping = false;
    const done = new Promise<number>((resolve) => {
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, 'stopping: the watch ends, pins stay (traffic keeps flowing)');
        resync?.stop();
        idleTrim?.stop();
        clearInterval(mapTimer);
        void (async () => {
          await source.stop();
          await cni?.close();
          await reconciler.idle();
          // ztunnel keeps serving the pods it has (its proxies survive an agent restart); the next
          // agent's snapshot reconciles them.
          await handoff?.close();
          await annotator?.close();
          server.close();
          datapath.close();
          resolve(0);
        })();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });

    await source
      .start(async (snapshot) => {
        const result = await reconciler.reconcile(cni ? cni.observe(snapshot) : snapshot);
        if (annotator && result) {
          const { clearStaleRedirection } = await import('../../agent/annotate.ts');
          clearStaleRedirection(annotator, snapshot, new Set(result.desired.ambientPods.map((p) => p.uid)), node);
        }
      })
      .catch((err: unknown) => {
        // A source that cannot start (refused credentials, unreadable file) ends the command; the HTTP
        // server would otherwise keep the process alive. Pins stay, as on SIGTERM.
        server.close();
        void cni?.close();
        void handoff?.close();
        datapath.close();
        throw err;
      });
    // SIGTERM before the first sync: nothing more to start.
    if (stopping) return done;
    ready = true;
    log.info(
      { node, mode: values.mode, bpffs: values.bpffs, cgroup, links: datapath.links },
      'ready: first reconcile done',
    );
    // Pods whose sandbox was not up yet, a ztunnel that restarted, and the periodic safety net.
    resync.start();
    if (!values['no-idle-trim']) {
      // What startup and each burst of passes left resident goes back once the loader is quiet (issue 20).
      const { releaseUnusedMemory } = await import('../../libbpf/memory.ts');
      const { IdleTrim } = await import('../idle-trim.ts');
      const mib = (kib: number): number => Math.round(kib / 102.4) / 10;
      idleTrim = new IdleTrim({
        activity: () => reconciler.stats.passes,
        trim: () => {
          const r = releaseUnusedMemory();
          // The first says what it is worth; later ones (after each safety net) only at debug.
          (idleTrim?.trims === 1 ? log.info : log.debug).call(
            log,
            { rssMiB: mib(r.rssAfterKiB), wasMiB: mib(r.rssBeforeKiB), mappings: r.mappings, failed: r.failed },
            'quiet: gave back free heap pages and clean file pages',
          );
        },
      });
      idleTrim.start();
    }
    return done;
  },
};
