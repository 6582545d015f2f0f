#!/bin/bash
# Raspberry Pi OS Bookworm: started once by `systemd.run=/boot/firmware/firstrun.sh` on the kernel
# command line (cmdline.txt), after raspberrypi-sys-mods' firstboot applied custom.toml (host
# name, user, SSH, Wi-Fi, locale). Installs wardgate, then removes itself and its cmdline.txt
# entries; systemd reboots when it exits (systemd.run_success_action=reboot).
set +e
BOOT=/boot/firmware
PAYLOAD="$BOOT/wardgate"
# shellcheck source=/dev/null
. "$PAYLOAD/gateway.env"

if [ -n "$WARDGATE_WLAN_COUNTRY" ] && [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
    /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan_country "$WARDGATE_WLAN_COUNTRY"
fi

# Static addresses: custom.toml knows only DHCP, so NetworkManager gets a keyfile. A card used
# before keeps no keyfile of the previous gateway (a wrong static address).
rm -f /etc/NetworkManager/system-connections/wardgate-*.nmconnection
if compgen -G "$PAYLOAD/network/*.nmconnection" > /dev/null; then
    install -d -m 0700 /etc/NetworkManager/system-connections
    for connection in "$PAYLOAD"/network/*.nmconnection; do
        install -m 0600 "$connection" /etc/NetworkManager/system-connections/
    done
fi

bash "$PAYLOAD/install.sh"

rm -f "$BOOT/firstrun.sh"
sed -i 's| systemd\.[^ ]*||g' "$BOOT/cmdline.txt"
exit 0
