# Depot appliance: after the first root login, stop showing the first-boot
# credentials before login (they stay in /root/depot-api-token).
if [ "$(id -u)" = 0 ] && [ -f /etc/issue.d/zz-depot-firstboot.issue ]; then
    rm -f /etc/issue.d/zz-depot-firstboot.issue
    echo "Depot: first-boot credentials removed from the login screen."
    echo "       Change the root password with: passwd"
    echo "       API token: /root/depot-api-token   Config: /etc/depot/depot.toml"
fi
