# mgmt-discover: a subsystem and a listener added live are in the discovery log
# (traddr 127.0.0.1, trsvcid PORT; guest port == host port) and usable.
# env: TADDR DPORT NQN PORT
. /usr/share/lab/case.sh
cleanup_all
echo "+ nvme discover -t tcp -a $TADDR -s $DPORT"
timeout 60 nvme discover -t tcp -a "$TADDR" -s "$DPORT" >/tmp/disc.out 2>&1 || { cat /tmp/disc.out; fail "discover"; }
cat /tmp/disc.out
awk -v n="$NQN" -v p="$PORT" '
    /^=+Discovery Log Entry/ { sv = ""; nq = "" }
    /^trsvcid:/ { sv = $2 }
    /^subnqn:/ { nq = $2; if (nq == n && sv == p) found = 1 }
    END { exit !found }' /tmp/disc.out || fail "no entry for $NQN on port $PORT"
nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect to the live subsystem"
io_ok "$(ns_dev "$NQN" 1)" || fail "I/O"
ndisconnect "$NQN" || fail "disconnect"
echo "mgmt-discover: OK"
