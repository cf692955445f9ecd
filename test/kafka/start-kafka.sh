#!/usr/bin/env bash
# Starts a real single-node Apache Kafka broker (KRaft, combined broker + controller) on
# 127.0.0.1 for the tests, and prints, on stdout, lines a shell can eval:
#   KAFKA_BROKERS=127.0.0.1:<port>  KAFKA_VERSION=<x.y.z>  KAFKA_DIR=<its work dir>
# Everything else (progress, errors) goes to stderr. Stop it with test/kafka/stop-kafka.sh.
#
# The broker jars and their runtime dependencies come from Maven Central through
# test/kafka/pom.xml (`mvn dependency:copy-dependencies`) and are cached per version in
# $TRIBUTARY_KAFKA_CACHE (default ~/.cache/tributary-kafka). Needs Java 17+ and mvn.
#   KAFKA_VERSION    broker version to fetch (default: the pom's, 4.4.0)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker (default 90)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")}"
cache="${TRIBUTARY_KAFKA_CACHE:-$HOME/.cache/tributary-kafka}/$version"
timeout="${KAFKA_START_TIMEOUT:-90}"

log() { echo "start-kafka: $*" >&2; }
command -v java >/dev/null || { log "java (17+) is not on PATH"; exit 1; }

if [ ! -f "$cache/complete" ]; then
  command -v mvn >/dev/null || { log "mvn is not on PATH and $cache holds no jars"; exit 1; }
  log "fetching org.apache.kafka:kafka_2.13:$version and its runtime dependencies from Maven Central"
  rm -rf "$cache" && mkdir -p "$cache"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Dkafka.version="$version" \
    -DincludeScope=runtime -DoutputDirectory="$cache/libs" >&2
  touch "$cache/complete"
fi

# Two free loopback ports (the OS picks them; another process could take one before
# Kafka binds it, in which case start-up fails loudly below rather than hanging).
read -r port cport < <(node -e "
  const net = require('node:net');
  const take = () => new Promise((ok) => { const s = net.createServer().listen(0, '127.0.0.1', () => ok(s)); });
  Promise.all([take(), take()]).then((ss) => { console.log(ss.map((s) => s.address().port).join(' ')); ss.forEach((s) => s.close()); });
")

dir="$(mktemp -d "${TMPDIR:-/tmp}/tributary-kafka.XXXXXX")"
cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
# One broker: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create many short-lived consumer groups: do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
PROPS
cat >"$dir/log4j2.properties" <<'PROPS'
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
PROPS

cp="$cache/libs/*"
jvm=(-Xms256m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true "-Dlog4j2.configurationFile=$dir/log4j2.properties")
cluster_id="$(java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$dir/kafka.log")"
java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >>"$dir/kafka.log" 2>&1

java "${jvm[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 &
echo $! >"$dir/kafka.pid"
log "broker pid $(cat "$dir/kafka.pid"), log $dir/kafka.log"

for ((i = 0; i < timeout * 4; i++)); do
  if grep -q 'Kafka Server started' "$dir/kafka.log"; then
    running="$(sed -n 's/.*Kafka version: \([^ ]*\).*/\1/p' "$dir/kafka.log" | head -1)"
    echo "KAFKA_BROKERS=127.0.0.1:$port"
    echo "KAFKA_VERSION=${running:-$version}"
    echo "KAFKA_DIR=$dir"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
    log "the broker exited during start-up:"; tail -40 "$dir/kafka.log" >&2; exit 1
  fi
  sleep 0.25
done
log "the broker did not start within ${timeout}s:"; tail -40 "$dir/kafka.log" >&2
"$here/stop-kafka.sh" "$dir" || true
exit 1
