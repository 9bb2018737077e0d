#!/usr/bin/env bash
# Install (apt) and start what wxdispatch needs on this machine, nothing else: PostgreSQL with
# trust auth on loopback (the default database URL has no password) and RabbitMQ with the
# guest user (guest/guest, loopback only). Safe to run again: what is installed and answering
# is left as it is. Used by .ci/run and by the README's quick start. Needs root or sudo.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_updated=0
need_pkg() { # need_pkg <command> <package...>
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$apt_updated" -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    log "installing ${*:2}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${@:2}"
  fi
}

# --- PostgreSQL ---
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  need_pkg psql postgresql postgresql-client
  [ -d /etc/postgresql ] || { if [ "$apt_updated" -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql; }
fi
need_pkg psql postgresql-client
PGVER=$(ls /etc/postgresql | sort -V | tail -n 1)
# trust auth on loopback, as the tests connect as postgres without a password
HBA=/etc/postgresql/$PGVER/main/pg_hba.conf
if [ -f "$HBA" ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$HBA"; then
  log "enabling trust auth on 127.0.0.1 in $HBA"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$HBA"
  pg_ctlcluster --skip-systemctl-redirect "$PGVER" main reload 2>/dev/null || true
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  log "starting PostgreSQL $PGVER"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start || true
fi
for i in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432 || { log "PostgreSQL does not answer"; exit 1; }

# --- RabbitMQ ---
need_pkg rabbitmq-server rabbitmq-server
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
fi
for i in $(seq 1 90); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 1; done
rabbitmqctl -q await_startup
# the node may be up with the rabbit application stopped (e.g. after `rabbitmqctl stop_app`)
if ! rabbitmqctl -q list_vhosts >/dev/null 2>&1; then
  log "starting the RabbitMQ application"
  rabbitmqctl -q start_app
  rabbitmqctl -q await_startup
fi
for i in $(seq 1 30); do rabbitmqctl -q list_vhosts >/dev/null 2>&1 && break; sleep 1; done
# the tests use guest/guest over loopback
rabbitmqctl -q list_users | grep -q '^guest' || { rabbitmqctl add_user guest guest; rabbitmqctl set_user_tags guest administrator; rabbitmqctl set_permissions -p / guest '.*' '.*' '.*'; }
# the management API: `wxdispatch setup`, the workers and the tests set the broker policies
# (alternate exchange, dead-lettering, delivery limit) through it; AMQP cannot
need_pkg curl curl
if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
  log "enabling rabbitmq_management"
  rabbitmq-plugins enable rabbitmq_management
fi
for i in $(seq 1 60); do curl -fs -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null && break; sleep 1; done
curl -fs -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null || { log "the RabbitMQ management API does not answer on :15672"; exit 1; }
log "PostgreSQL and RabbitMQ (with its management API on :15672) are answering on 127.0.0.1:5432 and 127.0.0.1:5672"
