// Offline check of deploy/k8s: renders each overlay with `kubectl kustomize`, then validates
//  1. every object against the Kubernetes API schemas: kubernetes-models' validators (required
//     fields, types, enums, formats) plus a strict walk over @kubernetes/client-node's generated
//     models that rejects any field the API does not have (a typo is not silently dropped);
//     PodMonitors against the prometheus-operator CRD schema (kubernetes-models);
//  2. the router's Envoy bootstrap (ConfigMap ihip-router) against Envoy's v3 protos: every key a
//     field of its message (typed_config by its @type), enums by name, protoc-gen-validate's
//     required / min_len / enum defined_only rules;
//  3. what this deployment needs to work: GPU only on ihip-server, /dev/shm memory-backed and
//     shared by both containers and large enough for the host tier, RocksDB mounted only in the
//     kvstore, gRPC probes on each container's own port, grace period >= the services' drain,
//     ring hash on x-ihip-sequence over the StatefulSet's pod names (>= HPA maxReplicas), HPA
//     metrics that the Prometheus adapter serves and the services export, Service/PodMonitor
//     ports that exist on the pods.
// Then the negative controls: broken copies (a misspelt field, a wrong type, the GPU on the
// kvstore, an unknown Envoy field, a bad Envoy enum, an HPA metric nobody exports, ...) must each
// be rejected, or the test fails. Exit 0 = pass, 1 = fail, 77 = skipped (no kubectl).
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const yaml = require("js-yaml");
const protobuf = require("protobufjs");
const { ObjectSerializer } = require("@kubernetes/client-node/dist/gen/model/models");
const models = require("@kubernetes/client-node/dist/gen/model/models");

const root = path.resolve(__dirname, "../..");
const overlays = ["h200", "cpu-dev"];

// ---- source of truth: the metric names the services register ---------------------------------
function sourceMetricNames() {
  const names = new Set();
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".cc")) {
        for (const m of fs.readFileSync(p, "utf8").matchAll(/"(ihip_[a-z0-9_]+)"/g)) names.add(m[1]);
      }
    }
  };
  walk(path.join(root, "services"));
  return names;
}

// ---- 1. Kubernetes schemas ---------------------------------------------------------------------
function modelName(apiVersion, kind) {
  const version = apiVersion.split("/").pop();
  return version.charAt(0).toUpperCase() + version.slice(1) + kind;
}

// Walks `value` as client-node type `type`; pushes "path: problem" for unknown fields and for
// values of the wrong JSON type.
function strictWalk(value, type, where, errors) {
  if (value === null || value === undefined) return;
  let m;
  if ((m = /^Array<(.+)>$/.exec(type))) {
    if (!Array.isArray(value)) return errors.push(`${where}: expected a list`);
    value.forEach((v, i) => strictWalk(v, m[1], `${where}[${i}]`, errors));
    return;
  }
  if ((m = /^\{ \[key: string\]: (.+); \}$/.exec(type))) {
    if (typeof value !== "object" || Array.isArray(value)) return errors.push(`${where}: expected a map`);
    for (const [k, v] of Object.entries(value)) strictWalk(v, m[1], `${where}.${k}`, errors);
    return;
  }
  if (type === "string" || type === "Date") {
    // Quantities (resources, sizeLimit) are strings in these models but numbers are valid YAML
    // for them; kubernetes-models' validators above check which string fields take numbers.
    if (typeof value !== "string" && typeof value !== "number") errors.push(`${where}: expected a string, got ${JSON.stringify(value)}`);
    return;
  }
  if (type === "number") {
    if (typeof value !== "number") errors.push(`${where}: expected a number, got ${JSON.stringify(value)}`);
    return;
  }
  if (type === "boolean") {
    if (typeof value !== "boolean") errors.push(`${where}: expected a boolean, got ${JSON.stringify(value)}`);
    return;
  }
  if (type === "IntOrString") {
    if (typeof value !== "string" && !Number.isInteger(value)) errors.push(`${where}: expected int or string`);
    return;
  }
  if (type === "object" || type === "any") return;
  const cls = models[type];
  if (!cls || !cls.attributeTypeMap) return errors.push(`${where}: no model for type ${type}`);
  if (typeof value !== "object" || Array.isArray(value)) return errors.push(`${where}: expected an object (${type})`);
  const fields = new Map(cls.attributeTypeMap.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!fields.has(k)) errors.push(`${where}.${k}: unknown field of ${type}`);
    else strictWalk(v, fields.get(k), `${where}.${k}`, errors);
  }
}

function validateObject(obj) {
  const errors = [];
  const id = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  if (group === "monitoring.coreos.com") {
    const mod = require(`@kubernetes-models/prometheus-operator/${group}/${version}/${obj.kind}`);
    try { new mod[obj.kind](obj).validate(); } catch (e) { errors.push(`${id}: ${e.message}`); }
    return errors;
  }
  const type = modelName(obj.apiVersion, obj.kind);
  if (!models[type]) return [`${id}: ${obj.apiVersion} ${obj.kind} is not a Kubernetes API type`];
  const modPath = group ? `kubernetes-models/${group}/${version}/${obj.kind}` : `kubernetes-models/${version}/${obj.kind}`;
  const mod = require(modPath);
  try { new mod[obj.kind](obj).validate(); } catch (e) { errors.push(`${id}: ${e.message}`); }
  strictWalk(obj, type, id, errors);
  // The round trip through the API types must give the same object back.
  const back = ObjectSerializer.serialize(ObjectSerializer.deserialize(obj, type), type);
  if (errors.length === 0 && JSON.stringify(sortKeys(back)) !== JSON.stringify(sortKeys(obj))) {
    errors.push(`${id}: does not survive a round trip through ${type}`);
  }
  return errors;
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).filter((k) => v[k] !== undefined).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}

// ---- 2. Envoy bootstrap against Envoy's protos ----------------------------------------------------
let envoyRoot = null;
function loadEnvoy() {
  if (envoyRoot) return envoyRoot;
  const deps = path.join(__dirname, "node_modules/@grpc/grpc-js-xds/deps");
  const dirs = ["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => path.join(deps, d));
  dirs.push("/usr/include");  // google/protobuf/*.proto (libprotobuf-dev)
  const r = new protobuf.Root();
  r.resolvePath = (origin, target) => {
    if (path.isAbsolute(target)) return target;
    for (const d of dirs) if (fs.existsSync(path.join(d, target))) return path.join(d, target);
    return target;
  };
  r.loadSync([
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
  ], { keepCase: true });
  r.resolveAll();
  envoyRoot = r;
  return r;
}

const kDuration = /^-?\d+(\.\d+)?s$/;
const kWrappers = {
  "google.protobuf.UInt32Value": "uint32", "google.protobuf.UInt64Value": "uint64",
  "google.protobuf.Int32Value": "int32", "google.protobuf.Int64Value": "int64",
  "google.protobuf.BoolValue": "bool", "google.protobuf.DoubleValue": "double",
  "google.protobuf.FloatValue": "float", "google.protobuf.StringValue": "string",
};

function checkScalar(value, type, where, errors) {
  const ints = ["uint32", "uint64", "int32", "int64", "fixed32", "fixed64", "sint32", "sint64", "sfixed32", "sfixed64"];
  if (ints.includes(type)) {
    if (!(Number.isInteger(value) || (typeof value === "string" && /^-?\d+$/.test(value)))) errors.push(`${where}: expected ${type}`);
    else if (type.startsWith("u") && Number(value) < 0) errors.push(`${where}: negative ${type}`);
  } else if (type === "bool") {
    if (typeof value !== "boolean") errors.push(`${where}: expected bool`);
  } else if (type === "double" || type === "float") {
    if (typeof value !== "number") errors.push(`${where}: expected ${type}`);
  } else if (type === "string" || type === "bytes") {
    if (typeof value !== "string") errors.push(`${where}: expected string`);
  } else errors.push(`${where}: unhandled scalar ${type}`);
}

function envoyWalk(value, msgType, where, errors) {
  const full = msgType.fullName.replace(/^\./, "");
  if (full === "google.protobuf.Duration") {
    if (typeof value !== "string" || !kDuration.test(value)) errors.push(`${where}: expected a duration like "5s"`);
    return;
  }
  if (kWrappers[full]) return checkScalar(value, kWrappers[full], where, errors);
  if (full === "google.protobuf.Struct" || full === "google.protobuf.Value") return;
  if (typeof value !== "object" || value === null || Array.isArray(value)) return errors.push(`${where}: expected an object (${full})`);
  if (full === "google.protobuf.Any") {
    const url = value["@type"];
    if (typeof url !== "string" || !url.startsWith("type.googleapis.com/")) return errors.push(`${where}: Any without a @type`);
    let inner;
    try { inner = envoyRoot.lookupType(url.slice("type.googleapis.com/".length)); } catch (e) { return errors.push(`${where}: unknown @type ${url}`); }
    const rest = Object.fromEntries(Object.entries(value).filter(([k]) => k !== "@type"));
    return envoyWalk(rest, inner, `${where}<${inner.name}>`, errors);
  }
  const byName = new Map();
  for (const f of msgType.fieldsArray) { byName.set(f.name, f); byName.set(f.name.replace(/_([a-z])/g, (_, c) => c.toUpperCase()), f); }
  const seenOneofs = new Map();
  for (const [k, v] of Object.entries(value)) {
    const f = byName.get(k);
    if (!f) { errors.push(`${where}.${k}: unknown field of ${full}`); continue; }
    if (f.options && f.options.deprecated) errors.push(`${where}.${k}: deprecated field of ${full}`);
    if (f.partOf) {
      if (seenOneofs.has(f.partOf.name)) errors.push(`${where}.${k}: oneof ${f.partOf.name} already set by ${seenOneofs.get(f.partOf.name)}`);
      seenOneofs.set(f.partOf.name, k);
    }
    const items = f.repeated ? (Array.isArray(v) ? v : (errors.push(`${where}.${k}: expected a list`), [])) : [v];
    if (f.map) {
      for (const [mk, mv] of Object.entries(v)) fieldValue(f, mv, `${where}.${k}.${mk}`, errors);
      continue;
    }
    items.forEach((item, i) => fieldValue(f, item, f.repeated ? `${where}.${k}[${i}]` : `${where}.${k}`, errors));
  }
  // protoc-gen-validate: required messages and (validate.required) oneofs.
  for (const f of msgType.fieldsArray) {
    const o = f.options || {};
    if (!f.partOf && o["(validate.rules).message.required"] && value[f.name] === undefined) errors.push(`${where}.${f.name}: required by ${full}`);
  }
  for (const o of msgType.oneofsArray) {
    if (o.options && o.options["(validate.required)"] && !seenOneofs.has(o.name)) errors.push(`${where}: one of ${o.oneof.join("|")} is required by ${full}`);
  }
}

function fieldValue(f, v, where, errors) {
  const o = f.options || {};
  if (f.resolvedType instanceof protobuf.Enum) {
    if (typeof v === "string" ? !(v in f.resolvedType.values) : !Object.values(f.resolvedType.values).includes(v)) {
      errors.push(`${where}: ${JSON.stringify(v)} is not a value of ${f.resolvedType.name}`);
    }
  } else if (f.resolvedType) {
    envoyWalk(v, f.resolvedType, where, errors);
  } else {
    checkScalar(v, f.type, where, errors);
    if (o["(validate.rules).string.min_len"] && typeof v === "string" && v.length < o["(validate.rules).string.min_len"]) {
      errors.push(`${where}: shorter than min_len ${o["(validate.rules).string.min_len"]}`);
    }
  }
}

function validateEnvoy(text) {
  const r = loadEnvoy();
  const errors = [];
  envoyWalk(yaml.load(text), r.lookupType("envoy.config.bootstrap.v3.Bootstrap"), "envoy", errors);
  return errors;
}

// ---- 3. what this deployment needs -------------------------------------------------------------
function gib(q) {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?$/.exec(String(q));
  if (!m) return NaN;
  return Number(m[1]) * { Ki: 2 ** -20, Mi: 2 ** -10, Gi: 1, Ti: 1024 }[m[2] || "Gi"] / (m[2] ? 1 : 2 ** 30);
}

function checkInvariants(objs, overlay, metrics, adapterNames) {
  const errors = [];
  const find = (kind, name) => objs.find((o) => o.kind === kind && o.metadata.name.startsWith(name));
  const sts = find("StatefulSet", "ihip");
  const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("ihip-config-"));
  const routerCm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("ihip-router-"));
  const hpa = find("HorizontalPodAutoscaler", "ihip");
  const headless = find("Service", "ihip-headless");
  if (!sts || !cm || !routerCm || !hpa || !headless) return ["missing one of StatefulSet ihip, ConfigMaps ihip-config/ihip-router, HPA ihip, Service ihip-headless"];
  const pod = sts.spec.template.spec;
  const kv = (pod.initContainers || []).find((c) => c.name === "ihip-kvstore");
  const server = (pod.containers || []).find((c) => c.name === "ihip-server");
  if (!kv || !server) return ["the pod needs containers ihip-kvstore (native sidecar) and ihip-server"];
  if (kv.restartPolicy !== "Always") errors.push("ihip-kvstore must be a native sidecar (restartPolicy: Always)");
  const gpu = (c) => Object.keys({ ...(c.resources || {}).requests, ...(c.resources || {}).limits }).includes("nvidia.com/gpu");
  if (gpu(kv)) errors.push("ihip-kvstore must not request a GPU");
  const wantGpu = cm.data.BACKEND === "cuda";
  if (gpu(server) !== wantGpu) errors.push(`ihip-server GPU request (${gpu(server)}) does not match BACKEND=${cm.data.BACKEND}`);
  if (wantGpu && String(server.resources.limits["nvidia.com/gpu"]) !== "1") errors.push("one GPU per pod: ihip-server must limit nvidia.com/gpu to 1");
  // /dev/shm
  const shm = (pod.volumes || []).find((v) => v.name === "shm");
  if (!shm || !shm.emptyDir || shm.emptyDir.medium !== "Memory") errors.push("volume shm must be an emptyDir with medium: Memory");
  for (const c of [kv, server]) {
    if (!(c.volumeMounts || []).some((m) => m.name === "shm" && m.mountPath === "/dev/shm")) errors.push(`${c.name} must mount shm at /dev/shm`);
  }
  const hostTier = Number(cm.data.HOST_TIER_GIB);
  if (!(hostTier > 0)) errors.push("ihip-config HOST_TIER_GIB must be a positive number");
  if (shm && shm.emptyDir && !(gib(shm.emptyDir.sizeLimit) >= hostTier + 0.5)) errors.push(`shm sizeLimit ${shm.emptyDir.sizeLimit} < host tier ${hostTier} GiB + 0.5 GiB of rings and tables`);
  if (!(gib(kv.resources.limits.memory) >= hostTier + 1)) errors.push(`ihip-kvstore memory limit ${kv.resources.limits.memory} must cover the host tier (${hostTier} GiB) it populates`);
  if (!kv.args.includes("--host_tier_gib=$(HOST_TIER_GIB)")) errors.push("ihip-kvstore must take --host_tier_gib from HOST_TIER_GIB");
  // RocksDB only in the kvstore
  const vct = (sts.spec.volumeClaimTemplates || []).map((t) => t.metadata.name);
  if (!vct.includes("rocksdb")) errors.push("volumeClaimTemplates must hold rocksdb");
  if (!(kv.volumeMounts || []).some((m) => m.name === "rocksdb")) errors.push("ihip-kvstore must mount rocksdb");
  if ((server.volumeMounts || []).some((m) => m.name === "rocksdb")) errors.push("ihip-server must not mount rocksdb");
  const rocksArg = kv.args.find((a) => a.startsWith("--rocksdb_path="));
  const rocksMount = kv.volumeMounts.find((m) => m.name === "rocksdb");
  if (!rocksArg || !rocksMount || !rocksArg.slice(15).startsWith(rocksMount.mountPath + "/")) errors.push("--rocksdb_path must lie on the rocksdb volume");
  // probes: grpc on the container's own gRPC port
  for (const [c, port] of [[kv, 50052], [server, 50051]]) {
    const listen = c.args.find((a) => a.startsWith("--grpc_address="));
    if (listen !== `--grpc_address=0.0.0.0:${port}`) errors.push(`${c.name} must listen on 0.0.0.0:${port} (probes come from the kubelet)`);
    for (const p of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      if (!c[p] || !c[p].grpc || c[p].grpc.port !== port) errors.push(`${c.name}.${p} must be a grpc probe on ${port}`);
    }
  }
  if (!server.args.includes("--kvstore_address=127.0.0.1:50052")) errors.push("ihip-server must reach the kvstore on 127.0.0.1:50052");
  if (!((pod.terminationGracePeriodSeconds || 30) >= 10 + 5 + 10)) errors.push("terminationGracePeriodSeconds must cover the server's 10 s drain + the kvstore's 5 s + flush");
  // router: ring hash on x-ihip-sequence over ihip-N.<headless>.<ns>
  const envoy = yaml.load(routerCm.data["envoy.yaml"]);
  const cluster = envoy.static_resources.clusters.find((c) => c.name === "ihip");
  const hcm = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
  const routes = hcm.route_config.virtual_hosts.flatMap((v) => v.routes);
  if (!cluster || cluster.lb_policy !== "RING_HASH") errors.push("envoy cluster ihip must use RING_HASH");
  if (!routes.every((r) => r.route && r.route.cluster === "ihip" && (r.route.hash_policy || []).some((h) => h.header && h.header.header_name === "x-ihip-sequence"))) {
    errors.push("every envoy route must go to cluster ihip and hash on the x-ihip-sequence header");
  }
  const ns = sts.metadata.namespace;
  const hosts = cluster ? cluster.load_assignment.endpoints.flatMap((e) => e.lb_endpoints).map((e) => e.endpoint.address.socket_address) : [];
  hosts.forEach((h, i) => {
    if (h.address !== `${sts.metadata.name}-${i}.${sts.spec.serviceName}.${ns}.svc.cluster.local` || h.port_value !== 50051) {
      errors.push(`envoy endpoint ${i} is ${h.address}:${h.port_value}, not pod ${sts.metadata.name}-${i} of Service ${sts.spec.serviceName} in ${ns}`);
    }
  });
  if (headless.metadata.name !== sts.spec.serviceName || headless.spec.clusterIP !== "None") errors.push("ihip-headless must be the StatefulSet's headless Service");
  if (hpa.spec.maxReplicas > hosts.length) errors.push(`HPA maxReplicas ${hpa.spec.maxReplicas} > ${hosts.length} pods on the router's ring`);
  if ((sts.spec.replicas || 1) > hosts.length) errors.push("more replicas than pods on the router's ring");
  if (hpa.spec.scaleTargetRef.kind !== "StatefulSet" || hpa.spec.scaleTargetRef.name !== sts.metadata.name) errors.push("HPA must scale the StatefulSet");
  for (const m of hpa.spec.metrics) {
    const name = m.pods && m.pods.metric.name;
    if (!name || !metrics.has(name)) errors.push(`HPA metric ${name} is not exported by the services`);
    if (name && !adapterNames.has(name)) errors.push(`HPA metric ${name} is not served by the Prometheus adapter rules`);
  }
  // ports referenced by Services and PodMonitors exist on the pods they select
  const podPorts = (labels) => objs.filter((o) => o.spec && o.spec.template && Object.entries(labels).every(([k, v]) => (o.spec.template.metadata.labels || {})[k] === v))
    .flatMap((o) => [...(o.spec.template.spec.containers || []), ...(o.spec.template.spec.initContainers || [])]).flatMap((c) => c.ports || []);
  for (const s of objs.filter((o) => o.kind === "Service")) {
    const ports = podPorts(s.spec.selector);
    for (const p of s.spec.ports) if (!ports.some((q) => q.name === p.targetPort || q.containerPort === p.targetPort)) errors.push(`Service ${s.metadata.name}: no pod port ${p.targetPort}`);
  }
  for (const pm of objs.filter((o) => o.kind === "PodMonitor")) {
    const ports = podPorts(pm.spec.selector.matchLabels);
    for (const e of pm.spec.podMetricsEndpoints) if (!ports.some((q) => q.name === e.port)) errors.push(`PodMonitor ${pm.metadata.name}: no pod port ${e.port}`);
  }
  for (const [c, port] of [[kv, 9102], [server, 9101]]) {
    if (!c.args.includes(`--metrics_port=${port}`) || !c.args.includes("--metrics_host=0.0.0.0")) errors.push(`${c.name} must serve /metrics on 0.0.0.0:${port}`);
  }
  return errors;
}

// ---- the Prometheus adapter's rules: which custom metrics it serves ---------------------------------
function adapterMetricNames(metrics, errors) {
  const cfg = yaml.load(fs.readFileSync(path.join(root, "deploy/prometheus/prometheus-adapter-rules.yaml"), "utf8"));
  const served = new Set();
  for (const r of cfg.rules || []) {
    const series = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(r.seriesQuery || "");
    if (!series || !metrics.has(series[1])) { errors.push(`adapter rule series ${r.seriesQuery} is not exported by the services`); continue; }
    const ov = (r.resources || {}).overrides || {};
    if (!ov.namespace || !ov.pod) errors.push(`adapter rule ${series[1]}: namespace and pod labels must map to resources`);
    if (!/<<\.Series>>/.test(r.metricsQuery || "") || !/<<\.LabelMatchers>>/.test(r.metricsQuery || "")) errors.push(`adapter rule ${series[1]}: metricsQuery must use <<.Series>> and <<.LabelMatchers>>`);
    const as = r.name && r.name.as ? series[1].replace(new RegExp(r.name.matches), r.name.as.replace(/\$\{(\d+)\}/g, "$$$1")) : series[1];
    served.add(as);
  }
  return served;
}

// ---- driver ----------------------------------------------------------------------------------------
function render(overlay) {
  return yaml.loadAll(execFileSync("kubectl", ["kustomize", path.join(root, "deploy/k8s/overlays", overlay)], { encoding: "utf8" })).filter(Boolean);
}

function checkAll(objs, overlay, metrics) {
  const errors = [];
  const served = adapterMetricNames(metrics, errors);
  for (const o of objs) errors.push(...validateObject(o));
  const routerCm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("ihip-router-"));
  if (routerCm) errors.push(...validateEnvoy(routerCm.data["envoy.yaml"]));
  if (errors.length === 0) errors.push(...checkInvariants(objs, overlay, metrics, served));
  return errors;
}

function clone(x) { return JSON.parse(JSON.stringify(x)); }
function podOf(objs) { return objs.find((o) => o.kind === "StatefulSet").spec.template.spec; }
function envoyEdit(objs, fn) {
  const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("ihip-router-"));
  const e = yaml.load(cm.data["envoy.yaml"]);
  fn(e);
  cm.data["envoy.yaml"] = yaml.dump(e);
}

// Each must be rejected.
const negativeControls = {
  "misspelt container field": (o) => { podOf(o).containers[0].imagePullPolcy = "Always"; },
  "containerPort as a string": (o) => { podOf(o).containers[0].ports[0].containerPort = "50051"; },
  "probe without a handler type": (o) => { podOf(o).containers[0].readinessProbe.grpc.port = "grpc"; },
  "missing StatefulSet selector": (o) => { delete o.find((x) => x.kind === "StatefulSet").spec.selector; },
  "unknown HPA metric source field": (o) => { o.find((x) => x.kind === "HorizontalPodAutoscaler").spec.metrics[0].pods.metric.nme = "x"; },
  "PodMonitor endpoint as a string": (o) => { o.find((x) => x.kind === "PodMonitor").spec.podMetricsEndpoints = "metrics"; },
  "GPU on the kvstore": (o) => { podOf(o).initContainers[0].resources.limits["nvidia.com/gpu"] = 1; },
  "rocksdb mounted in the server": (o) => { podOf(o).containers[0].volumeMounts.push({ name: "rocksdb", mountPath: "/data" }); },
  "/dev/shm on disk": (o) => { delete podOf(o).volumes.find((v) => v.name === "shm").emptyDir.medium; },
  "shm smaller than the host tier": (o) => { podOf(o).volumes.find((v) => v.name === "shm").emptyDir.sizeLimit = "1Gi"; },
  "http liveness probe": (o) => { podOf(o).containers[0].livenessProbe = { httpGet: { path: "/metrics", port: 9101 } }; },
  "short grace period": (o) => { podOf(o).terminationGracePeriodSeconds = 5; },
  "HPA metric nobody exports": (o) => { o.find((x) => x.kind === "HorizontalPodAutoscaler").spec.metrics[0].pods.metric.name = "ihip_server_queue_len"; },
  "HPA beyond the ring": (o) => { o.find((x) => x.kind === "HorizontalPodAutoscaler").spec.maxReplicas = 9; },
  "Service port not on the pod": (o) => { o.find((x) => x.kind === "Service" && x.metadata.name === "ihip-headless").spec.ports[1].targetPort = "metrcs"; },
  "envoy: unknown cluster field": (o) => envoyEdit(o, (e) => { e.static_resources.clusters[0].lb_polcy = "RING_HASH"; }),
  "envoy: bad lb_policy enum": (o) => envoyEdit(o, (e) => { e.static_resources.clusters[0].lb_policy = "RINGHASH"; }),
  "envoy: bad duration": (o) => envoyEdit(o, (e) => { e.static_resources.clusters[0].connect_timeout = "2 seconds"; }),
  "envoy: unknown typed_config type": (o) => envoyEdit(o, (e) => { e.static_resources.listeners[0].filter_chains[0].filters[0].typed_config["@type"] += "X"; }),
  "envoy: route field typo": (o) => envoyEdit(o, (e) => { e.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.hash_polcy = []; }),
  "envoy: no hash on the sequence": (o) => envoyEdit(o, (e) => { e.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.hash_policy[0].header.header_name = "x-sequence"; }),
  "envoy: endpoint of another Service": (o) => envoyEdit(o, (e) => { e.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address = "ihip-1.other.ihip.svc.cluster.local"; }),
};

function main() {
  try { execFileSync("kubectl", ["version", "--client"], { stdio: "ignore" }); } catch (e) {
    console.log("SKIP: kubectl (with its built-in kustomize) is not installed; cannot render deploy/k8s");
    process.exit(77);
  }
  const metrics = sourceMetricNames();
  if (metrics.size < 10) { console.log(`FAIL: found only ${metrics.size} metric names under services/`); process.exit(1); }
  let failed = 0;
  let rendered = {};
  for (const overlay of overlays) {
    const objs = render(overlay);
    rendered[overlay] = objs;
    const errors = checkAll(objs, overlay, metrics);
    const kinds = [...new Set(objs.map((o) => o.kind))].sort().join(", ");
    if (errors.length) { failed++; console.log(`FAIL overlays/${overlay}:\n  ${errors.join("\n  ")}`); }
    else console.log(`ok   overlays/${overlay}: ${objs.length} objects (${kinds}) valid; Envoy config valid; invariants hold`);
  }
  for (const [name, mutate] of Object.entries(negativeControls)) {
    const objs = clone(rendered.h200);
    mutate(objs);
    const errors = checkAll(objs, "h200", metrics);
    if (errors.length === 0) { failed++; console.log(`FAIL negative control "${name}": accepted`); }
    else console.log(`ok   negative control "${name}": rejected (${errors[0].slice(0, 110)})`);
  }
  if (failed) { console.log(`${failed} check(s) failed`); process.exit(1); }
  console.log("k8s manifests: all checks passed");
}

main();
