#!/usr/bin/env python3
"""Generates the Depot Grafana dashboards (plain JSON, Grafana >= 9).

    python3 packaging/grafana/generate.py     # rewrites the *.json next to it

Every metric named here must be exported by `depot serve` on /metrics;
tests/system/dashboards.rs checks the generated JSON against a live daemon.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


class Layout:
    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        p = {"type": "row", "title": title, "collapsed": False, "panels": [],
             "id": self.id(), "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}}
        self.y += 1
        return p

    def id(self):
        i = self.next_id
        self.next_id += 1
        return i


def stat(L, title, expr, unit="none", w=4, h=4, desc="", thresholds=None):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat", "title": title, "description": desc, "id": L.id(),
        "gridPos": L.place(w, h), "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
    }


def ts(L, title, targets, unit="none", w=12, h=8, desc="", stack=False, minv=None, maxv=None):
    defaults = {"unit": unit, "custom": {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1,
                                          "showPoints": "never",
                                          "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}
    if minv is not None:
        defaults["min"] = minv
    if maxv is not None:
        defaults["max"] = maxv
    refs = "ABCDEFGH"
    return {
        "type": "timeseries", "title": title, "description": desc, "id": L.id(),
        "gridPos": L.place(w, h), "datasource": DS,
        "targets": [target(e, l, refs[i]) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def table(L, title, expr, w=24, h=8, desc=""):
    return {
        "type": "table", "title": title, "description": desc, "id": L.id(),
        "gridPos": L.place(w, h), "datasource": DS,
        "targets": [dict(target(expr, instant=True), format="table")],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
    }


def var_ds():
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "options": []}


def var_query(name, label, query, multi=False, include_all=False):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
            "allValue": ".*" if include_all else None, "current": {}, "hide": 0, "options": []}


def dashboard(uid, title, panels, variables, desc):
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["depot", "iscsi", "storage"],
        "timezone": "browser", "editable": True, "graphTooltip": 1, "schemaVersion": 39,
        "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": []}, "links": [
            {"title": "Depot dashboards", "type": "dashboards", "tags": ["depot"], "asDropdown": True}],
        "panels": panels,
    }


SEL = 'instance=~"$instance"'


def overview():
    L = Layout()
    p = []
    p.append(L.row("Cluster"))
    p.append(stat(L, "Nodes up", f'count(up{{job=~"$job", {SEL}}} == 1)'))
    p.append(stat(L, "VMs", f"count(count by (instance, vm) (depot_vdisk_size_bytes{{{SEL}}}))"))
    p.append(stat(L, "vDisks", f"count(depot_vdisk_size_bytes{{{SEL}}})"))
    p.append(stat(L, "Provisioned", f"sum(depot_vdisk_size_bytes{{{SEL}}})", unit="bytes"))
    p.append(stat(L, "iSCSI sessions", f"sum(depot_target_sessions{{{SEL}}})"))
    p.append(stat(L, "I/O errors (5m)", f"sum(increase(depot_vdisk_io_errors_total{{{SEL}}}[5m])) or vector(0)",
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]))
    p.append(L.row("Front-end I/O"))
    p.append(ts(L, "IOPS by node", [
        (f"sum by (instance) (rate(depot_vdisk_read_ops_total{{{SEL}}}[$__rate_interval]))", "{{instance}} read"),
        (f"sum by (instance) (rate(depot_vdisk_write_ops_total{{{SEL}}}[$__rate_interval]))", "{{instance}} write"),
    ], unit="iops"))
    p.append(ts(L, "Throughput by node", [
        (f"sum by (instance) (rate(depot_vdisk_read_bytes_total{{{SEL}}}[$__rate_interval]))", "{{instance}} read"),
        (f"sum by (instance) (rate(depot_vdisk_write_bytes_total{{{SEL}}}[$__rate_interval]))", "{{instance}} write"),
    ], unit="Bps"))
    p.append(ts(L, "Latency p99", [
        (f"histogram_quantile(0.99, sum by (le) (rate(depot_vdisk_read_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))", "read p99"),
        (f"histogram_quantile(0.99, sum by (le) (rate(depot_vdisk_write_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))", "write p99"),
        (f"sum(rate(depot_vdisk_write_latency_seconds_sum{{{SEL}}}[$__rate_interval])) / sum(rate(depot_vdisk_write_latency_seconds_count{{{SEL}}}[$__rate_interval]))", "write mean"),
        (f"sum(rate(depot_vdisk_read_latency_seconds_sum{{{SEL}}}[$__rate_interval])) / sum(rate(depot_vdisk_read_latency_seconds_count{{{SEL}}}[$__rate_interval]))", "read mean"),
    ], unit="s"))
    p.append(ts(L, "Top 10 VMs by IOPS", [
        (f"topk(10, sum by (vm) (rate(depot_vdisk_read_ops_total{{{SEL}}}[$__rate_interval]) + rate(depot_vdisk_write_ops_total{{{SEL}}}[$__rate_interval])))", "{{vm}}"),
    ], unit="iops"))
    p.append(ts(L, "Queue depth by VM", [
        (f"sum by (vm) (depot_vdisk_queue_depth{{{SEL}}})", "{{vm}}"),
    ], stack=True))
    p.append(ts(L, "I/O errors", [
        (f"sum by (vm, vdisk) (rate(depot_vdisk_io_errors_total{{{SEL}}}[$__rate_interval]))", "{{vm}}/{{vdisk}}"),
    ], unit="reqps"))
    p.append(L.row("vPools"))
    ps = f'{SEL}, vpool=~"$vpool"'
    p.append(ts(L, "Write buffer fill", [
        (f"depot_vpool_write_buffer_fill_ratio{{{ps}}}", "{{instance}} {{vpool}}"),
    ], unit="percentunit", minv=0, maxv=1,
        desc="Unshipped data over the write buffers; writes are throttled when it reaches 100%."))
    p.append(ts(L, "Writes waiting for uploads", [
        (f"rate(depot_vpool_write_throttle_seconds_total{{{ps}}}[$__rate_interval])", "{{instance}} {{vpool}}"),
    ], unit="none",
        desc="Writes waiting at any moment because their vDisk's write buffer is full (seconds waited per second). "
             "Fill is a pool average; one busy vDisk can throttle while it stays low."))
    p.append(ts(L, "Upload lag", [
        (f"depot_vpool_ship_pending_bytes{{{ps}}}", "{{instance}} {{vpool}} pending"),
    ], unit="bytes", desc="Bytes written but not yet on the backend."))
    p.append(ts(L, "Upload rate", [
        (f"rate(depot_vpool_uploaded_bytes_total{{{ps}}}[$__rate_interval])", "{{instance}} {{vpool}}"),
    ], unit="Bps"))
    p.append(ts(L, "Backend errors", [
        (f"rate(depot_vpool_backend_errors_total{{{ps}}}[$__rate_interval])", "{{instance}} {{vpool}}"),
    ], unit="reqps"))
    p.append(ts(L, "Clusters rewritten on flash", [
        (f"rate(depot_vpool_rewritten_clusters_total{{{ps}}}[$__rate_interval])", "{{instance}} {{vpool}} in place"),
        (f"rate(depot_vpool_relocated_clusters_total{{{ps}}}[$__rate_interval])", "{{instance}} {{vpool}} relocated"),
    ], unit="cps",
        desc="In place: whole-cluster rewrites of recent, unshipped data that reuse their slot instead of appending. "
             "Relocated: fragmented reads rewritten contiguously."))
    p.append(ts(L, "Read cache", [
        (f"depot_vpool_read_cache_hit_ratio{{{ps}}}", "{{vpool}} hit ratio"),
    ], unit="percentunit", minv=0, maxv=1))
    p.append(ts(L, "Read cache dedup ratio", [
        (f"depot_vpool_read_cache_dedup_ratio{{{ps}}}", "{{vpool}}"),
    ], unit="none"))
    p.append(ts(L, "Capacity", [
        (f"depot_vpool_logical_bytes{{{ps}}}", "{{vpool}} provisioned"),
        (f"depot_vpool_flash_bytes{{{ps}}}", "{{vpool}} on flash"),
        (f"depot_vpool_backend_bytes{{{ps}}}", "{{vpool}} on backend"),
    ], unit="bytes", w=24))
    # Clustered routers only (a standalone router exports none of these).
    p.append(L.row("Grid (clustered routers)"))
    p.append(table(L, "Routers", f"min by (router) (depot_cluster_router_up{{{SEL}}})", w=6,
                   desc="Every member of the cluster: 1 while its lease lives, 0 when any router that "
                        "reaches etcd sees it lapsed (its vDisks are not served)."))
    p.append(ts(L, "Lease remaining", [
        (f"depot_router_lease_remaining_seconds{{{SEL}}}", "{{router}}"),
    ], unit="s", w=9, minv=0,
        desc="How long each router may still acknowledge I/O without another lease renewal; "
             "it falls to 0 when the router cannot reach etcd."))
    p.append(ts(L, "vDisks owned", [
        (f"depot_router_vdisks_owned{{{SEL}}}", "{{router}}"),
    ], w=9, stack=True, desc="vDisks each router owns (serves the I/O of)."))
    p.append(table(L, "vDisk owners and generations",
                   f"max by (vm, vdisk, owner) (depot_vdisk_owner_info{{{SEL}}}"
                   f" * on (instance, vm, vdisk) group_left depot_vdisk_generation{{{SEL}}})",
                   desc="The router that owns each vDisk; the value is the ownership's generation "
                        "(it only grows; a move or takeover raises it)."))
    variables = [
        var_ds(),
        var_query("job", "Job", "label_values(up, job)"),
        var_query("instance", "Node", 'label_values(depot_vdisk_size_bytes{job=~"$job"}, instance)', multi=True, include_all=True),
        var_query("vpool", "vPool", 'label_values(depot_vpool_logical_bytes{instance=~"$instance"}, vpool)', multi=True, include_all=True),
    ]
    return dashboard("depot-cluster-overview", "Depot / Cluster overview", p, variables,
                     "All Depot nodes: front-end I/O, vPool write buffers, upload lag, backend health and capacity.")


def vm_detail():
    L = Layout()
    p = []
    d = f'{SEL}, vm="$vm", vdisk=~"$vdisk"'
    p.append(L.row("VM $vm"))
    p.append(stat(L, "iSCSI sessions", f'sum(depot_target_sessions{{{SEL}, vm="$vm"}})',
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]))
    p.append(stat(L, "vDisks", f'count(depot_vdisk_size_bytes{{{SEL}, vm="$vm"}})'))
    p.append(stat(L, "Provisioned", f'sum(depot_vdisk_size_bytes{{{SEL}, vm="$vm"}})', unit="bytes"))
    p.append(stat(L, "IOPS", f"sum(rate(depot_vdisk_read_ops_total{{{d}}}[5m]) + rate(depot_vdisk_write_ops_total{{{d}}}[5m]))", unit="iops"))
    p.append(stat(L, "Throughput", f"sum(rate(depot_vdisk_read_bytes_total{{{d}}}[5m]) + rate(depot_vdisk_write_bytes_total{{{d}}}[5m]))", unit="Bps"))
    p.append(stat(L, "I/O errors (1h)", f"sum(increase(depot_vdisk_io_errors_total{{{d}}}[1h])) or vector(0)",
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]))
    p.append(L.row("vDisks"))
    p.append(ts(L, "IOPS", [
        (f"rate(depot_vdisk_read_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} read"),
        (f"rate(depot_vdisk_write_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} write"),
    ], unit="iops"))
    p.append(ts(L, "Throughput", [
        (f"rate(depot_vdisk_read_bytes_total{{{d}}}[$__rate_interval])", "{{vdisk}} read"),
        (f"rate(depot_vdisk_write_bytes_total{{{d}}}[$__rate_interval])", "{{vdisk}} write"),
    ], unit="Bps"))
    p.append(ts(L, "Read latency", [
        (f"histogram_quantile(0.5, sum by (vdisk, le) (rate(depot_vdisk_read_latency_seconds_bucket{{{d}}}[$__rate_interval])))", "{{vdisk}} p50"),
        (f"histogram_quantile(0.99, sum by (vdisk, le) (rate(depot_vdisk_read_latency_seconds_bucket{{{d}}}[$__rate_interval])))", "{{vdisk}} p99"),
    ], unit="s"))
    p.append(ts(L, "Write latency", [
        (f"histogram_quantile(0.5, sum by (vdisk, le) (rate(depot_vdisk_write_latency_seconds_bucket{{{d}}}[$__rate_interval])))", "{{vdisk}} p50"),
        (f"histogram_quantile(0.99, sum by (vdisk, le) (rate(depot_vdisk_write_latency_seconds_bucket{{{d}}}[$__rate_interval])))", "{{vdisk}} p99"),
    ], unit="s"))
    p.append(ts(L, "Average I/O size", [
        (f"rate(depot_vdisk_read_bytes_total{{{d}}}[$__rate_interval]) / rate(depot_vdisk_read_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} read"),
        (f"rate(depot_vdisk_write_bytes_total{{{d}}}[$__rate_interval]) / rate(depot_vdisk_write_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} write"),
    ], unit="bytes"))
    p.append(ts(L, "Queue depth", [
        (f"depot_vdisk_queue_depth{{{d}}}", "{{vdisk}}"),
    ]))
    p.append(ts(L, "Flush and unmap", [
        (f"rate(depot_vdisk_flush_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} flush"),
        (f"rate(depot_vdisk_unmap_ops_total{{{d}}}[$__rate_interval])", "{{vdisk}} unmap"),
    ], unit="reqps"))
    p.append(ts(L, "I/O errors", [
        (f"rate(depot_vdisk_io_errors_total{{{d}}}[$__rate_interval])", "{{vdisk}}"),
    ], unit="reqps"))
    p.append(table(L, "vDisks of $vm", f'depot_vdisk_size_bytes{{{SEL}, vm="$vm"}}'))
    variables = [
        var_ds(),
        var_query("instance", "Node", "label_values(depot_vdisk_size_bytes, instance)"),
        var_query("vm", "VM", 'label_values(depot_vdisk_size_bytes{instance=~"$instance"}, vm)'),
        var_query("vdisk", "vDisk", 'label_values(depot_vdisk_size_bytes{instance=~"$instance", vm="$vm"}, vdisk)',
                  multi=True, include_all=True),
    ]
    return dashboard("depot-vm-detail", "Depot / VM detail", p, variables,
                     "One VM's iSCSI target and vDisks: sessions, IOPS, throughput, latency, queue depth, errors.")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for name, dash in (("depot-cluster-overview.json", overview()), ("depot-vm-detail.json", vm_detail())):
        with open(os.path.join(here, name), "w") as f:
            json.dump(dash, f, indent=2)
            f.write("\n")
        print(name)
