# Shared by the benchmark scripts (sourced): a 3-member worknode cluster on loopback.
# The caller sets `work` (a scratch directory) and `pids` (an array) and defines stop_all.

# start_cluster BINARY NAME PORT_PREFIX [SETTINGS] [ROTATION]: members on
# PORT_PREFIX379/380, +100 and +200 (e.g. 14 → clients 14379, 14479, 14579), fsync on,
# pinning off, rotation ROTATION (default off, 400 ms turns when on), SETTINGS (top-level
# config lines) added; returns once a write succeeds. Sets `endpoints` to the client
# addresses.
start_cluster() {
  local bin=$1 name=$2 prefix=$3 settings=${4:-} rotation=${5:-off} i member
  endpoints="127.0.0.1:${prefix}379,127.0.0.1:${prefix}479,127.0.0.1:${prefix}579"
  for i in 1 2 3; do
    {
      printf 'cluster = "%s"\nmember_id = %s\ndata_dir = "%s"\n' "$name" "$i" "$work/$name-d$i"
      printf '%b' "$settings"
      printf '[schedule]\nrotation = "%s"\n[cores]\npin = "off"\n' "$rotation"
      for member in 1 2 3; do
        printf '[[member]]\nid = %s\nname = "n%s"\npeer = "127.0.0.1:%s%s80"\nclient = "127.0.0.1:%s%s79"\n' \
          "$member" "$member" "$prefix" "$((member + 2))" "$prefix" "$((member + 2))"
      done
    } > "$work/$name-n$i.toml"
    "$bin" serve --config "$work/$name-n$i.toml" > "$work/$name-n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=1s put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster of $bin did not become ready (logs in $work)" >&2; trap - EXIT; stop_all; exit 1
}
