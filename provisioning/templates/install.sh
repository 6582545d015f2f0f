#!/bin/bash
# wardgate first-boot installer (docs/provisioning.md). Runs as root, once, from cloud-init's
# runcmd (user-data) or from firstrun.sh (Bookworm). Safe to run again by hand:
#     sudo bash /boot/firmware/wardgate/install.sh
# It installs wardgate from the wheels on the card, puts config and secrets under
# $WARDGATE_CONF_DIR (0600, owned by the service user), enables wardgate.service, and then
# removes the secrets from the boot partition, which is FAT and readable by whoever holds the card.
set -euo pipefail

PAYLOAD="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
. "$PAYLOAD/gateway.env"
SERVICE_USER=wardgate
LOG=/var/log/wardgate-install.log
exec > >(tee -a "$LOG") 2>&1
echo "wardgate install for gateway $WARDGATE_ID started $(date -Is)"

fail() {
    echo "wardgate install FAILED: $*"
    {
        echo "wardgate install for gateway $WARDGATE_ID failed on $(date -Is):"
        echo "$*"
        echo "Full log on the gateway: $LOG"
    } > "$PAYLOAD/INSTALL-FAILED.txt" || true
    exit 1
}

board_serial() {
    if [ -r /sys/firmware/devicetree/base/serial-number ]; then
        tr -d '\0' < /sys/firmware/devicetree/base/serial-number
    else
        awk -F': *' '/^Serial/ {print $2}' /proc/cpuinfo
    fi
}

# 1. A card belongs to one board: on another one it would impersonate the gateway.
if [ "$WARDGATE_CHECK_SERIAL" = 1 ]; then
    actual="$(board_serial || true)"
    if [ "${actual,,}" != "${WARDGATE_HW_SERIAL,,}" ]; then
        fail "this card is for board $WARDGATE_HW_SERIAL (gateway $WARDGATE_ID) but this" \
            "board is '${actual:-unknown}'. Put the card into the right gateway, or fix hw_serial" \
            "in the inventory and provision again."
    fi
fi

# 2. The service user: dialout for serial fire sensors, video for cameras.
if ! id "$SERVICE_USER" > /dev/null 2>&1; then
    useradd --system --home-dir /var/lib/wardgate --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi
usermod -a -G dialout,video "$SERVICE_USER"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/wardgate

# 3. Config, key, certificates and password: 0600, owned by the service user. The site's
# drop-ins in $WARDGATE_CONF_DIR/conf.d/ (commissioning page, technicians) are never written or
# deleted here: a re-flash replaces config.toml and the secrets and keeps the site's overrides.
SRC="$PAYLOAD/etc"
if [ -d "$SRC" ]; then
    install -d -m 0750 -o root -g "$SERVICE_USER" "$WARDGATE_CONF_DIR" "$WARDGATE_CONF_DIR/tls"
    [ -d "$WARDGATE_CONF_DIR/conf.d" ] \
        || install -d -m 0750 -o root -g "$SERVICE_USER" "$WARDGATE_CONF_DIR/conf.d"
    while IFS= read -r rel; do
        install -D -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$SRC/$rel" \
            "$WARDGATE_CONF_DIR/$rel"
    done < <(cd "$SRC" && find . -type f -not -path './conf.d/*' -printf '%P\n')
elif [ ! -f "$WARDGATE_CONF_DIR/config.toml" ]; then
    fail "no config: $SRC is missing and $WARDGATE_CONF_DIR/config.toml does not exist"
fi

# 4. The software, from the wheels on the card: no network needed.
WHEELS="$PAYLOAD/wheels"
if compgen -G "$WHEELS/wardgate-*.whl" > /dev/null; then
    if [ ! -x "$WARDGATE_VENV/bin/python" ]; then
        python3 -m venv "$WARDGATE_VENV" || fail "python3 -m venv failed (install python3-venv)"
    fi
    # the gateway role: the base install only decodes events (docs/provisioning.md, 'Wheelhouse')
    "$WARDGATE_VENV/bin/pip" install --no-index --find-links "$WHEELS" --upgrade 'wardgate[gateway]' \
        || fail "pip could not install wardgate from $WHEELS: are the wheels built for this" \
            "board's Python and CPU (aarch64)? See docs/provisioning.md, 'Wheelhouse'."
elif [ ! -x "$WARDGATE_VENV/bin/wardgate" ]; then
    fail "no wardgate wheels in $WHEELS and no $WARDGATE_VENV/bin/wardgate: write the card" \
        "with 'wardgate provision flash ... --wheelhouse DIR'"
fi
ln -sf "$WARDGATE_VENV/bin/wardgate" /usr/local/bin/wardgate

# 5. The config must pass before the service is enabled.
"$WARDGATE_VENV/bin/wardgate" check-config "$WARDGATE_CONF_DIR/config.toml" \
    || fail "config check failed (see above)"

# 6. The install's result, for the gateway's retained `state` (`provision status` shows it).
version="$("$WARDGATE_VENV/bin/wardgate" --version 2>/dev/null | awk '{print $2}')"
printf '{"installed_at": "%s", "version": "%s", "result": "ok"}\n' "$(date -Is)" "$version" \
    > "$WARDGATE_CONF_DIR/installed.json"
chown "$SERVICE_USER:$SERVICE_USER" "$WARDGATE_CONF_DIR/installed.json"
chmod 0640 "$WARDGATE_CONF_DIR/installed.json"

# 7. The service.
install -m 0644 "$PAYLOAD/wardgate.service" /etc/systemd/system/wardgate.service
systemctl daemon-reload
systemctl enable wardgate.service
systemctl start --no-block wardgate.service || true

# 8. Remove the secrets from the boot partition.
rm -rf "$SRC" "$PAYLOAD/network"
rm -f "$PAYLOAD/INSTALL-FAILED.txt"
date -Is > "$PAYLOAD/INSTALLED"
sync
echo "wardgate install for gateway $WARDGATE_ID done $(date -Is)"
