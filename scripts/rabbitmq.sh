# Make sure the local RabbitMQ (127.0.0.1:5672, guest/guest) is installed and running.
# Source it or run it. Installs Debian's rabbitmq-server where it is absent.
set -euo pipefail
if ! command -v rabbitmqctl >/dev/null 2>&1; then
    echo "rabbitmq: not installed; installing rabbitmq-server with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "rabbitmq: stopped; starting it" >&2
    rabbitmq-server -detached
fi
for _ in $(seq 1 60); do
    if rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1; then
        echo "rabbitmq: running" >&2
        break
    fi
    sleep 1
done
rabbitmqctl -q await_startup --timeout 10 >/dev/null
