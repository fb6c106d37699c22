#!/usr/bin/env bash
# Runs a real Apache Kafka broker (KRaft, one combined broker+controller node) and a real
# Apache Cassandra node on this machine, from Maven Central jars: no Docker engine needed.
# docker-compose.yaml at the repo root is the equivalent for machines that have Docker.
#
# The servers' configs and static JVM options are checked-in files under services/kafka/ and
# services/cassandra/ (see services/README.md); this script only renders them, starts, waits,
# stops and reports. Everything it writes (jars, data, logs, pid files, rendered configs)
# lives under one git-ignored folder, $COINSTREAM_SERVICES_DIR (default <repo>/.services).
# Run with -h for usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COINSTREAM_SERVICES_DIR:-$ROOT/.services}"

KAFKA_PORT="${KAFKA_PORT:-9092}"
# The controller was on 9093 before the secure listener took that port (the issue's and
# Kafka's docs' usual SASL_SSL port). A broker formatted with the old port restarts fine on
# the new one: the quorum is static (controller.quorum.voters), so no endpoint is stored in
# the metadata log.
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9094}"
KAFKA_SECURE_PORT="${KAFKA_SECURE_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
CASSANDRA_PORT="${CASSANDRA_PORT:-9042}"
CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-7000}"
CASSANDRA_HEAP="${CASSANDRA_HEAP:-1G}"
CASSANDRA_SECURE_PORT="${CASSANDRA_SECURE_PORT:-9142}"
CASSANDRA_SECURE_STORAGE_PORT="${CASSANDRA_SECURE_STORAGE_PORT:-7001}"
CASSANDRA_SECURE_HEAP="${CASSANDRA_SECURE_HEAP:-512M}"
START_TIMEOUT_SECS="${SERVICES_TIMEOUT_SECS:-180}"
STOP_TIMEOUT_SECS="${SERVICES_STOP_TIMEOUT_SECS:-60}"
HOST=127.0.0.1
ALL_SERVICES=(kafka cassandra)
# Set by --secure: Kafka gets its SASL_SSL listener and the cassandra-secure node runs too.
SECURE=0

usage() {
  cat <<EOF
Usage: scripts/services.sh COMMAND [--secure] [SERVICE...]

Real Apache Kafka ($HOST:$KAFKA_PORT) and Apache Cassandra ($HOST:$CASSANDRA_PORT),
run from Maven Central jars. SERVICE is kafka, cassandra or cassandra-secure; the default
is kafka and cassandra, plus cassandra-secure with --secure.

--secure (up, status, env): Kafka also listens with SASL_SSL (SCRAM-SHA-512) on
$HOST:$KAFKA_SECURE_PORT, its plain listener unchanged (a running Kafka without it is
restarted), and a second Cassandra node, cassandra-secure, serves CQL over TLS only, with
PasswordAuthenticator, on $HOST:$CASSANDRA_SECURE_PORT. A throwaway CA, the servers'
certificates, a client certificate and random passwords are made once under
\$COINSTREAM_SERVICES_DIR/tls/; "env --secure" prints what a client needs.

Commands:
  up [SERVICE...]      start (in parallel) and wait until each answers a real request;
                       a no-op for a service that is already up
  start SERVICE...     same as up, for the named services
  down [SERVICE...]    stop what this script started (TERM, then KILL after a timeout)
  stop SERVICE...      same as down, for the named services
  status               print each service's state; exit 0 only if all are up and answering
  tls                  make the throwaway CA, certificates and passwords of --secure (once)
                       and print their folder (for docker-compose.secure.yaml)
  logs [SERVICE] [-f]  print the last \$LOG_LINES (40) lines of the log(s); -f follows
  env                  print KAFKA_BOOTSTRAP, CASSANDRA_NODES, KAFKA_JARS and JAVA as shell assignments;
                       with --secure also KAFKA_SECURE_BOOTSTRAP, KAFKA_SASL_USERNAME,
                       KAFKA_SASL_PASSWORD, CASSANDRA_SECURE_NODES, CASSANDRA_USERNAME,
                       CASSANDRA_PASSWORD, COINSTREAM_TLS_CA, COINSTREAM_TLS_CLIENT_CERT,
                       COINSTREAM_TLS_CLIENT_KEY and COINSTREAM_TLS_OTHER_CA (a CA that signed
                       nothing here, for tests of a wrong CA)

Environment (defaults in brackets):
  COINSTREAM_SERVICES_DIR  state folder [<repo>/.services]
  KAFKA_PORT [9092]  KAFKA_CONTROLLER_PORT [9094]  KAFKA_SECURE_PORT [9093]  KAFKA_HEAP [512m]
  CASSANDRA_PORT [9042]  CASSANDRA_STORAGE_PORT [7000]  CASSANDRA_HEAP [1G]
  CASSANDRA_SECURE_PORT [9142]  CASSANDRA_SECURE_STORAGE_PORT [7001]  CASSANDRA_SECURE_HEAP [512M]
  SERVICES_TIMEOUT_SECS [180]  SERVICES_STOP_TIMEOUT_SECS [60]
  SERVICES_JAVA_HOME  a JDK 17 [/usr/lib/jvm/java-17-openjdk-amd64]; Cassandra 5.0 does
                      not run on JDK 24+, so \$JAVA_HOME is deliberately not used
EOF
}

log() { printf '%s services: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_service_name() {
  case "$1" in
    kafka | cassandra | cassandra-secure) ;;
    *) die "unknown service '$1' (valid: kafka, cassandra, cassandra-secure)" ;;
  esac
}

# --- JDK ------------------------------------------------------------------------------------

JAVA_HOME_17=""
find_jdk17() {
  [[ -n "$JAVA_HOME_17" ]] && return 0
  local candidates=()
  if [[ -n "${SERVICES_JAVA_HOME:-}" ]]; then
    candidates=("$SERVICES_JAVA_HOME")
  else
    candidates=(/usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk* /usr/lib/jvm/*-17*)
  fi
  local c
  for c in "${candidates[@]}"; do
    [[ -x "$c/bin/java" && -x "$c/bin/javac" ]] || continue
    if "$c/bin/java" -XshowSettings:properties -version 2>&1 |
      grep -q 'java.specification.version = 17$'; then
      JAVA_HOME_17="$c"
      return 0
    fi
  done
  die "no JDK 17 found (tried: ${candidates[*]}); set SERVICES_JAVA_HOME to one"
}

# --- checked-in files -----------------------------------------------------------------------

# Renders the template services/$1 into $2, replacing @NAME@ with VALUE for each NAME=VALUE
# argument. sed rather than envsubst: gettext-base is not in minimal Debian images, and
# envsubst would also rewrite any other $WORD a config happens to contain. A placeholder
# left over is an error naming the template line, so a typo never reaches a server as text.
render() {
  local tmpl=$1 src="$ROOT/services/$1" dst=$2
  shift 2
  [[ -f "$src" ]] || die "template $src is missing"
  local kv name value names=() script=(-e '')
  for kv in "$@"; do
    name=${kv%%=*} value=${kv#*=}
    [[ "$value" != *$'\n'* ]] || die "$tmpl: the value for @$name@ contains a newline"
    # Escape what a sed replacement treats specially: backslash, & and the | delimiter.
    value="$(printf '%s' "$value" | sed 's/[\\&|]/\\&/g')"
    script+=(-e "s|@$name@|$value|g")
    names+=("$name")
  done
  sed "${script[@]}" "$src" >"$dst.partial"
  local left
  if left="$(grep -n -o '@[A-Z][A-Z0-9_]*@' "$dst.partial")"; then
    rm -f "$dst.partial"
    die "services/$tmpl: placeholder(s) with no value, as line:@NAME@:" \
      "$(echo "$left" | tr '\n' ' ')(scripts/services.sh fills only: ${names[*]:-none})"
  fi
  mv "$dst.partial" "$dst"
}

# Prints the @argfile argument for services/$1/jvm.options (the static JVM options).
jvm_options() {
  local f="$ROOT/services/$1/jvm.options"
  [[ -f "$f" ]] || die "$1: JVM options file $f is missing"
  echo "@$f"
}

# --- jars and probes ------------------------------------------------------------------------

# cassandra-secure is the same server as cassandra: one jar folder, one probe build.
jar_service() { echo "${1%-secure}"; }
jars_dir() { echo "$STATE/jars/$(jar_service "$1")"; }

# Resolves services/<svc>/pom.xml into $STATE/jars/<svc>, once per pom content. Maven keeps
# its own cache in ~/.m2, so a wiped state folder costs a copy, not a download.
ensure_jars() {
  local svc pom
  svc="$(jar_service "$1")"
  pom="$ROOT/services/$svc/pom.xml"
  local dir stamp want
  dir="$(jars_dir "$svc")"
  stamp="$dir/.pom.sha256"
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: it is needed once to fetch the $svc jars"
  local tmp="$STATE/jars/.$svc.partial" mvn_log="$STATE/jars/$svc-mvn.log" t0=$SECONDS
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "$svc: resolving jars from $pom"
  if ! JAVA_HOME="$JAVA_HOME_17" mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2
    die "$svc: mvn could not resolve the jars (full log: $mvn_log)"
  fi
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "$want" >"$stamp"
  log "$svc: $(find "$dir" -name '*.jar' | wc -l) jars resolved in $((SECONDS - t0))s"
}

probe_class() {
  case "$1" in
    kafka) echo KafkaReady ;;
    cassandra | cassandra-secure) echo CqlReady ;;
  esac
}

# Compiles the readiness probe (services/<svc>/<Class>.java) against the service's own jars.
ensure_probe() {
  local svc class src out stamp want
  svc="$(jar_service "$1")"
  class="$(probe_class "$svc")"
  src="$ROOT/services/$svc/$class.java"
  out="$STATE/probe/$svc"
  stamp="$out/.sha256"
  want="$(cat "$src" "$(jars_dir "$svc")/.pom.sha256" | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    rm -rf "$out"
    mkdir -p "$out"
    "$JAVA_HOME_17/bin/javac" -nowarn -d "$out" -cp "$(jars_dir "$svc")/*" "$src" ||
      die "$svc: could not compile $src"
    echo "$want" >"$stamp"
  fi
  # Only Cassandra's jars carry logback; Kafka's probe is quietened with -Dlog4j2.level.
  if [[ "$svc" == cassandra ]]; then
    render cassandra/probe-logback.xml "$out/logback.xml"
  fi
}

# One readiness attempt: a real metadata request (Kafka) or CQL query (Cassandra).
probe() {
  local svc=$1 out="$STATE/$1/probe.out"
  local cp
  local args=()
  cp="$(jars_dir "$svc")/*:$STATE/probe/$(jar_service "$svc")"
  local args=() env=()
  case "$svc" in
    kafka)
      args=(-Dlog4j2.level=ERROR KafkaReady "$HOST:$KAFKA_PORT" 3000)
      if kafka_is_secure; then
        load_secrets
        args+=(--secure "$HOST:$KAFKA_SECURE_PORT" "$KAFKA_SASL_USERNAME" "$STATE/tls/truststore.p12")
        env=("SCRAM_PASSWORD=$KAFKA_SASL_PASSWORD" "STORE_PASSWORD=$STORE_PASSWORD")
      fi
      ;;
    cassandra) args=("-Dlogback.configurationFile=$STATE/probe/cassandra/logback.xml"
      CqlReady "$HOST" "$CASSANDRA_PORT" 3000) ;;
    cassandra-secure)
      load_secrets
      args=("-Dlogback.configurationFile=$STATE/probe/cassandra/logback.xml"
        CqlReady "$HOST" "$CASSANDRA_SECURE_PORT" 3000
        --secure "$CASSANDRA_USERNAME" "$STATE/tls/truststore.p12")
      env=("CQL_PASSWORD=$CASSANDRA_PASSWORD" "STORE_PASSWORD=$STORE_PASSWORD")
      ;;
  esac
  mkdir -p "$STATE/$svc"
  env "${env[@]}" timeout 20 "$JAVA_HOME_17/bin/java" -Xmx128m -XX:TieredStopAtLevel=1 \
    -cp "$cp" "${args[@]}" >"$out" 2>&1 </dev/null 9>&-
}

# --- processes ------------------------------------------------------------------------------

pid_file() { echo "$STATE/$1/$1.pid"; }
log_file() { echo "$STATE/$1/logs/$1.log"; }

# Prints the pid if the pid file names a live process that this script started for $1.
# The marker property guards against a recycled pid.
running_pid() {
  local svc=$1 pf pid
  pf="$(pid_file "$svc")"
  [[ -f "$pf" ]] || return 1
  pid="$(cat "$pf")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  is_server "$pid" "$svc" || return 1
  echo "$pid"
}

# Whether process $1 is the java server of service $2 (launch marks its command line).
is_server() { ps -ww -o args= -p "$1" 2>/dev/null | grep -q -- "-Dcoinstream.service=$2 "; }

service_ports() {
  case "$1" in
    kafka)
      if ((SECURE)); then
        echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SECURE_PORT"
      else
        echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
      fi
      ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT" ;;
    cassandra-secure) echo "$CASSANDRA_SECURE_PORT $CASSANDRA_SECURE_STORAGE_PORT" ;;
  esac
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_ports_free() {
  local svc=$1 port
  for port in $(service_ports "$svc"); do
    if port_in_use "$port"; then
      ss -ltnp "sport = :$port" >&2 2>/dev/null || true
      die "$svc: port $port is already in use by a process not started for $STATE" \
        "(set the port env vars to move $svc, see -h)"
    fi
  done
}

# Starts the JVM detached (own session, stdin closed, no inherited lock fd) and records its pid.
launch() {
  local svc=$1
  shift
  local logf
  logf="$(log_file "$svc")"
  printf '\n===== %s: starting %s =====\n' "$(date -Is)" "$svc" >>"$logf"
  (
    cd "$STATE/$svc"
    exec setsid "$JAVA_HOME_17/bin/java" "-Dcoinstream.service=$svc" "$@" \
      >>"$logf" 2>&1 </dev/null 9>&-
  ) &
  local pid=$! i
  echo "$pid" >"$(pid_file "$svc")"
  # The background shell becomes java by exec (through setsid). Until it has, its command line is
  # the shell's, and running_pid takes the service for gone: wait_ready, checking at once, then
  # reported "the process exited during startup" for a Cassandra that went on to start. Wait
  # for the exec, or for the process to end (wait_ready reports that).
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    is_server "$pid" "$svc" && break
    sleep 0.1
  done
}

# --- Kafka ----------------------------------------------------------------------------------

render_kafka_config() {
  local d="$STATE/kafka"
  mkdir -p "$d/config" "$d/data" "$d/logs" "$d/tmp"
  render kafka/server.properties "$d/config/server.properties" \
    HOST="$HOST" KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
    KAFKA_DATA_DIR="$d/data"
  if ((SECURE)); then
    load_secrets
    render kafka/server-secure.properties "$d/config/server-secure.properties" \
      HOST="$HOST" KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
      KAFKA_SECURE_PORT="$KAFKA_SECURE_PORT" TLS_DIR="$STATE/tls" STORE_PASSWORD="$STORE_PASSWORD"
    cat "$d/config/server-secure.properties" >>"$d/config/server.properties"
    rm "$d/config/server-secure.properties"
  fi
  render kafka/log4j2.properties "$d/config/log4j2.properties"
}

kafka_jvm_opts() {
  local d="$STATE/kafka" argfile
  argfile="$(jvm_options kafka)"
  KAFKA_OPTS=(
    "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" "$argfile"
    "-XX:ErrorFile=$d/logs/hs_err_%p.log"
    "-Djava.io.tmpdir=$d/tmp"
    "-Dkafka.logs.dir=$d/logs"
    "-Dlog4j2.configurationFile=$d/config/log4j2.properties"
    -cp "$(jars_dir kafka)/*"
  )
}

# KRaft needs its log dir formatted once with a cluster id; -g leaves a formatted dir alone.
format_kafka() {
  local d="$STATE/kafka"
  [[ -f "$d/data/meta.properties" ]] && return 0
  if [[ ! -s "$d/cluster.id" ]]; then
    "$JAVA_HOME_17/bin/java" "${KAFKA_OPTS[@]}" kafka.tools.StorageTool random-uuid \
      2>>"$(log_file kafka)" | grep -E '^[A-Za-z0-9_-]{22}$' >"$d/cluster.id" ||
      die "kafka: StorageTool random-uuid printed no cluster id (see $(log_file kafka))"
  fi
  log "kafka: formatting storage (cluster id $(cat "$d/cluster.id"))"
  if ! "$JAVA_HOME_17/bin/java" "${KAFKA_OPTS[@]}" kafka.tools.StorageTool format \
    -t "$(cat "$d/cluster.id")" -c "$d/config/server.properties" -g \
    >>"$(log_file kafka)" 2>&1; then
    tail -n 40 "$(log_file kafka)" >&2
    die "kafka: storage format failed"
  fi
}

start_kafka() {
  render_kafka_config
  local KAFKA_OPTS
  kafka_jvm_opts
  format_kafka
  launch kafka "${KAFKA_OPTS[@]}" kafka.Kafka "$STATE/kafka/config/server.properties"
}

# Whether the running (or last rendered) broker config has the SASL_SSL listener.
kafka_is_secure() {
  grep -q '^listeners=.*SASL_SSL://' "$STATE/kafka/config/server.properties" 2>/dev/null
}

# --- TLS material and passwords (--secure) ---------------------------------------------------

# Makes, once, under $STATE/tls: a throwaway CA; server certificates for Kafka and Cassandra
# naming only IP 127.0.0.1 (both clients connect by address), as PKCS12 keystores; a truststore
# with the CA; a client certificate and key for mutual TLS; an unrelated CA for tests of a
# wrong CA; and random passwords in secrets.env. Everything is written to a temporary folder
# and moved into place last, so an interrupted run leaves nothing half made.
ensure_tls() {
  local d="$STATE/tls"
  [[ -f "$d/secrets.env" ]] && return 0
  command -v openssl >/dev/null || die "openssl not found: it makes the throwaway CA for --secure"
  local tmp="$STATE/.tls.partial" store name
  rm -rf "$tmp"
  mkdir -p "$tmp"
  chmod 700 "$tmp"
  store="$(openssl rand -hex 16)"
  (
    cd "$tmp"
    set -e
    ca() {
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.crt" -addext keyUsage=critical,keyCertSign,cRLSign
    }
    leaf() { # name, subject, extended key usage
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s' \
        "$3" "$4" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt"
      rm "$1.csr" "$1.ext"
    }
    ca ca "coinstream throwaway test CA"
    ca other-ca "coinstream unrelated CA (signed nothing)"
    rm other-ca.key
    for name in kafka cassandra; do
      leaf "$name" "$HOST" serverAuth "subjectAltName=IP:$HOST"
      openssl pkcs12 -export -in "$name.crt" -inkey "$name.key" -certfile ca.crt -name "$name" \
        -out "$name.p12" -passout "pass:$store"
    done
    leaf client coinstream-client clientAuth ""
    "$JAVA_HOME_17/bin/keytool" -importcert -noprompt -alias ca -file ca.crt \
      -keystore truststore.p12 -storetype PKCS12 -storepass "$store"
    {
      echo "STORE_PASSWORD=$store"
      echo "KAFKA_SASL_USERNAME=coinstream"
      echo "KAFKA_SASL_PASSWORD=$(openssl rand -hex 16)"
      echo "CASSANDRA_USERNAME=coinstream"
      echo "CASSANDRA_PASSWORD=$(openssl rand -hex 16)"
    } >secrets.env
    chmod 600 ./*.key secrets.env
  ) >"$STATE/tls-make.log" 2>&1 || {
    tail -n 20 "$STATE/tls-make.log" >&2
    die "could not make the TLS material (full log: $STATE/tls-make.log)"
  }
  rm -rf "$d"
  mv "$tmp" "$d"
  log "made a throwaway CA, certificates and passwords in $d"
}

# Reads $STATE/tls/secrets.env (made by ensure_tls) into shell variables; only known names.
load_secrets() {
  local f="$STATE/tls/secrets.env" key value
  [[ -f "$f" ]] || die "$f is missing: run scripts/services.sh up --secure first"
  while IFS='=' read -r key value; do
    case "$key" in
      STORE_PASSWORD | KAFKA_SASL_USERNAME | KAFKA_SASL_PASSWORD | CASSANDRA_USERNAME | CASSANDRA_PASSWORD)
        printf -v "$key" '%s' "$value" ;;
      *) die "$f: unexpected line $key=..." ;;
    esac
  done <"$f"
}

# --- Cassandra ------------------------------------------------------------------------------

# The secure node differs from the plain one only in these values and the added secure yaml.
cassandra_dir() { echo "$STATE/$1"; }

render_cassandra_config() {
  local svc=$1 d port storage cluster
  d="$(cassandra_dir "$svc")"
  mkdir -p "$d/conf" "$d/data" "$d/logs" "$d/tmp" "$d/triggers"
  if [[ "$svc" == cassandra-secure ]]; then
    port=$CASSANDRA_SECURE_PORT storage=$CASSANDRA_SECURE_STORAGE_PORT cluster=coinstream-secure
  else
    port=$CASSANDRA_PORT storage=$CASSANDRA_STORAGE_PORT cluster=coinstream-dev
  fi
  render cassandra/cassandra.yaml "$d/conf/cassandra.yaml" \
    HOST="$HOST" CASSANDRA_PORT="$port" CASSANDRA_STORAGE_PORT="$storage" \
    CASSANDRA_DATA_DIR="$d/data" CASSANDRA_CLUSTER="$cluster"
  if [[ "$svc" == cassandra-secure ]]; then
    load_secrets
    render cassandra/cassandra-secure.yaml "$d/conf/cassandra-secure.yaml" \
      TLS_DIR="$STATE/tls" STORE_PASSWORD="$STORE_PASSWORD"
    cat "$d/conf/cassandra-secure.yaml" >>"$d/conf/cassandra.yaml"
    rm "$d/conf/cassandra-secure.yaml"
  fi
  render cassandra/logback.xml "$d/conf/logback.xml"
}

start_cassandra-secure() { start_cassandra cassandra-secure; }

start_cassandra() {
  local svc=${1:-cassandra}
  render_cassandra_config "$svc"
  local d jars jamm argfile heap=$CASSANDRA_HEAP
  [[ "$svc" == cassandra-secure ]] && heap=$CASSANDRA_SECURE_HEAP
  d="$(cassandra_dir "$svc")"
  argfile="$(jvm_options cassandra)"
  jars="$(jars_dir cassandra)"
  jamm="$(find "$jars" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)"
  [[ -n "$jamm" ]] || die "cassandra: jamm jar missing from $jars"
  local opts=(
    "-Xms$heap" "-Xmx$heap" "$argfile"
    # The jamm agent's jar name carries its version, so it is found at start time.
    "-javaagent:$jamm"
    "-XX:ErrorFile=$d/logs/hs_err_%p.log"
    # Natives (JNA, Netty) unpack here rather than in /tmp, which may be noexec.
    "-Djava.io.tmpdir=$d/tmp" "-Djna.tmpdir=$d/tmp" "-Dio.netty.native.workdir=$d/tmp"
    "-Dcassandra.config=file://$d/conf/cassandra.yaml"
    "-Dcassandra.storagedir=$d/data" "-Dcassandra.logdir=$d/logs"
    "-Dcassandra.triggers_dir=$d/triggers"
    "-Dlogback.configurationFile=$d/conf/logback.xml"
    -cp "$jars/*"
    org.apache.cassandra.service.CassandraDaemon
  )
  launch "$svc" "${opts[@]}"
}

# --- commands -------------------------------------------------------------------------------

# Waits until $1 answers its probe; fails early if the process exits.
wait_ready() {
  local svc=$1 t0=$SECONDS deadline=$((SECONDS + START_TIMEOUT_SECS))
  while :; do
    if ! running_pid "$svc" >/dev/null; then
      log "$svc: the process exited during startup; last 40 lines of $(log_file "$svc"):"
      tail -n 40 "$(log_file "$svc")" >&2
      return 1
    fi
    if probe "$svc"; then
      log "$svc: ready on $HOST:$(service_ports "$svc" | cut -d' ' -f1) after $((SECONDS - t0))s" \
        "($(tail -n 1 "$STATE/$svc/probe.out"))"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "$svc: not ready after ${START_TIMEOUT_SECS}s (SERVICES_TIMEOUT_SECS);" \
        "last probe: $(tail -n 1 "$STATE/$svc/probe.out")"
      log "$svc: last 40 lines of $(log_file "$svc"):"
      tail -n 40 "$(log_file "$svc")" >&2
      return 1
    fi
    sleep 1
  done
}

# Serialises up/down so two callers never start the same service twice. The lock fd is
# closed in the servers (see launch), so it is released when this script exits.
take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9
}

# Waits for every background job given (by pid); fails when any of them failed.
wait_all() {
  local p rc=0
  for p in "$@"; do
    wait "$p" || rc=1
  done
  return "$rc"
}

cmd_up() {
  local services=("$@") svc pid to_wait=()
  take_lock
  find_jdk17
  ((SECURE)) && ensure_tls
  for svc in "${services[@]}"; do
    if [[ "$svc" == kafka ]] && ((SECURE)) && running_pid kafka >/dev/null && ! kafka_is_secure; then
      # The SASL_SSL listener is part of the broker's config: it takes a restart.
      log "kafka: running without the SASL_SSL listener; restarting it with --secure"
      stop_one kafka
    fi
    if pid="$(running_pid "$svc")"; then
      if probe "$svc"; then
        log "$svc: already up (pid $pid)"
        continue
      fi
      log "$svc: running (pid $pid) but not answering yet; waiting"
      to_wait+=("$svc")
      continue
    fi
    rm -f "$(pid_file "$svc")"
    check_ports_free "$svc"
    mkdir -p "$STATE/$svc/logs"
    ensure_jars "$svc"
    ensure_probe "$svc"
    "start_$svc"
    log "$svc: started (pid $(cat "$(pid_file "$svc")"), log $(log_file "$svc"))"
    to_wait+=("$svc")
  done
  for svc in "${to_wait[@]}"; do
    wait_ready "$svc" &
    WAITERS+=($!)
  done
  wait_all "${WAITERS[@]}" || die "not every service came up; stop the rest with: scripts/services.sh down"
}

stop_one() {
  local svc=$1 pid t0=$SECONDS
  if ! pid="$(running_pid "$svc")"; then
    rm -f "$(pid_file "$svc")"
    log "$svc: not running"
    return 0
  fi
  log "$svc: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - t0 >= STOP_TIMEOUT_SECS)); then
      log "$svc: still alive after ${STOP_TIMEOUT_SECS}s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$(pid_file "$svc")"
  log "$svc: stopped after $((SECONDS - t0))s"
}

cmd_down() {
  local svc pids=()
  take_lock
  for svc in "$@"; do
    stop_one "$svc" &
    pids+=($!)
  done
  wait_all "${pids[@]}"
}

cmd_status() {
  local svc pid rc=0 port services=("${ALL_SERVICES[@]}")
  ((SECURE)) && services+=(cassandra-secure)
  for svc in "${services[@]}"; do
    port="$(service_ports "$svc" | cut -d' ' -f1)"
    if pid="$(running_pid "$svc")"; then
      find_jdk17
      if ((SECURE)) && [[ "$svc" == kafka ]] && ! kafka_is_secure; then
        echo "$svc: up (pid $pid) on $HOST:$port but without the SASL_SSL listener"
        rc=3
      elif [[ -d "$STATE/probe/$(jar_service "$svc")" ]] && probe "$svc"; then
        echo "$svc: up (pid $pid) on $HOST:$port"
      else
        echo "$svc: running (pid $pid) but not answering on $HOST:$port"
        rc=3
      fi
    else
      echo "$svc: stopped"
      rc=3
    fi
  done
  return "$rc"
}

cmd_logs() {
  local follow=0 services=() a files=()
  for a in "$@"; do
    case "$a" in
      -f | --follow) follow=1 ;;
      *) check_service_name "$a" && services+=("$a") ;;
    esac
  done
  ((${#services[@]})) || services=("${ALL_SERVICES[@]}")
  for a in "${services[@]}"; do
    [[ -f "$(log_file "$a")" ]] && files+=("$(log_file "$a")")
  done
  ((${#files[@]})) || die "no logs yet under $STATE"
  if ((follow)); then
    exec tail -n "${LOG_LINES:-40}" -F "${files[@]}"
  fi
  tail -n "${LOG_LINES:-40}" "${files[@]}"
}

# Background readiness waiters; killed if we are interrupted, so none outlives the script
# (and holds the lock). The servers themselves keep running: stop them with `down`.
WAITERS=()
on_signal() {
  ((${#WAITERS[@]})) && kill "${WAITERS[@]}" 2>/dev/null
  log "interrupted; servers already started keep running (scripts/services.sh down stops them)"
  exit 130
}

main() {
  trap on_signal INT TERM
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  local args=() a
  for a in "$@"; do
    case "$a" in
      --secure) SECURE=1 ;;
      *) args+=("$a") ;;
    esac
  done
  set -- "${args[@]}"
  case "$cmd" in
    up | start | down | stop)
      local services=("$@") s
      if ((${#services[@]} == 0)); then
        [[ "$cmd" == start || "$cmd" == stop ]] &&
          die "$cmd needs a service: kafka, cassandra or cassandra-secure"
        services=("${ALL_SERVICES[@]}")
        # down stops the secure node whether or not --secure is given: nothing else would.
        if ((SECURE)) || [[ "$cmd" == down ]]; then
          services+=(cassandra-secure)
        fi
      fi
      for s in "${services[@]}"; do check_service_name "$s"; done
      case "$cmd" in
        up | start) cmd_up "${services[@]}" ;;
        down | stop) cmd_down "${services[@]}" ;;
      esac
      ;;
    status) cmd_status ;;
    tls)
      take_lock
      find_jdk17
      ensure_tls
      echo "$STATE/tls"
      ;;
    logs) cmd_logs "$@" ;;
    env)
      find_jdk17
      echo "KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT"
      echo "CASSANDRA_NODES=$HOST:$CASSANDRA_PORT"
      # For tests that write topics with the Java producer (tests/java/TopicWriter.java).
      echo "KAFKA_JARS=$(jars_dir kafka)"
      echo "JAVA=$JAVA_HOME_17/bin/java"
      if ((SECURE)); then
        load_secrets
        echo "KAFKA_SECURE_BOOTSTRAP=$HOST:$KAFKA_SECURE_PORT"
        echo "KAFKA_SASL_USERNAME=$KAFKA_SASL_USERNAME"
        echo "KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD"
        echo "CASSANDRA_SECURE_NODES=$HOST:$CASSANDRA_SECURE_PORT"
        echo "CASSANDRA_USERNAME=$CASSANDRA_USERNAME"
        echo "CASSANDRA_PASSWORD=$CASSANDRA_PASSWORD"
        echo "COINSTREAM_TLS_CA=$STATE/tls/ca.crt"
        echo "COINSTREAM_TLS_CLIENT_CERT=$STATE/tls/client.crt"
        echo "COINSTREAM_TLS_CLIENT_KEY=$STATE/tls/client.key"
        echo "COINSTREAM_TLS_OTHER_CA=$STATE/tls/other-ca.crt"
      fi
      ;;
    -h | --help | help) usage ;;
    '') usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
