# shellcheck shell=bash
# SPDX-License-Identifier: MIT
# Sourced by the stub keel-bench programs of tests/tools/compare_*_test.sh.
# bench_stub_json RATE CPU STALLED [CPUS]: the JSON a keel-bench client prints at the end of a
# run, with RATE messages/s, CPU ns of server CPU per message (null: not sampled), STALLED
# connections that got no echo in the window and CPUS ns of the server CPUs' busy time per
# message (default 500; null: not read); the other figures fixed.
bench_stub_json() {
	cat <<JSON
{
  "stalled_conns": $3,
  "msgs_per_sec": $1,
  "gbps": 0,
  "lat_p50_us": 10,
  "lat_p99_us": 20,
  "server_cpu_ns_per_msg": $2,
  "server_cpu_util": 0.5,
  "client_cpu_util": 0.5,
  "client_cores": 0.5,
  "client_bound": false,
  "lost": 0,
  "server_cpus_ns_per_msg": ${4:-500}
}
JSON
}
