# negative: MODE=unknown-nqn: connecting to a subsystem that does not exist fails,
#   and the listener still serves the real one afterwards.
# MODE=allow-host: this guest's host NQN is refused; ALLOWED (the one on the list) works.
# env: TADDR PORT NQN MODE [ALLOWED]
. /usr/share/lab/case.sh
cleanup_all
mark=$(dmesg | wc -l)
newdmesg() { dmesg | tail -n +$((mark + 1)) | grep -iE 'nvme|connect' | tail -n 8; mark=$(dmesg | wc -l); }
case $MODE in
unknown-nqn)
    bad=nqn.2026-11.io.nvmf:does-not-exist
    if nconnect "$TADDR" "$PORT" "$bad"; then fail "connect to $bad succeeded"; fi
    echo "connect to $bad refused (as wanted)"
    newdmesg
    [ -z "$(ctrl_of "$bad")" ] || fail "controller for $bad exists"
    nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect $NQN after the refusal"
    io_ok "$(ns_dev "$NQN")" || fail "io"
    ndisconnect "$NQN" || fail "disconnect"
    ;;
allow-host)
    echo "this host: $HOSTNQN; allowed: $ALLOWED"
    if nconnect "$TADDR" "$PORT" "$NQN"; then fail "host $HOSTNQN was let in"; fi
    echo "connect as $HOSTNQN refused (as wanted)"
    newdmesg
    [ -z "$(ctrl_of "$NQN")" ] || fail "controller exists after refusal"
    nconnect "$TADDR" "$PORT" "$NQN" --hostnqn="$ALLOWED" >/dev/null || fail "allowed host refused"
    c=$(ctrl_of "$NQN") || fail "no controller"
    echo "connect as $ALLOWED: $c hostnqn=$(cat /sys/class/nvme/$c/hostnqn)"
    io_ok "$(ns_dev "$NQN")" || fail "io"
    ndisconnect "$NQN" || fail "disconnect"
    ;;
*) fail "MODE=$MODE" ;;
esac
echo "negative-$MODE: OK"
