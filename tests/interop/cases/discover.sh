# discover: `nvme discover` against the discovery listener lists every expected
# subsystem, as an NVMe subsystem entry, on the expected trsvcid/traddr.
# env: TADDR DPORT EXP_NQNS ("nqn nqn ..") EXP_TRSVCID EXP_TRADDR
. /usr/share/lab/case.sh
cleanup_all
echo "+ nvme discover -t tcp -a $TADDR -s $DPORT"
timeout 60 nvme discover -t tcp -a "$TADDR" -s "$DPORT" >/tmp/disc.out 2>&1
rc=$?
cat /tmp/disc.out
[ $rc = 0 ] || fail "nvme discover rc=$rc"
# one line per entry: "subtype|subnqn|trtype|traddr|trsvcid"
awk '
    /^=====Discovery Log Entry/ { if (n) print st "|" nqn "|" tt "|" ta "|" ts; n = 1; st = nqn = tt = ta = ts = "" }
    { k = $0; sub(/:.*/, "", k); v = $0; sub(/^[^:]*:[ ]*/, "", v) }
    k == "subtype" { st = v } k == "subnqn" { nqn = v } k == "trtype" { tt = v }
    k == "traddr" { ta = v } k == "trsvcid" { ts = v }
    END { if (n) print st "|" nqn "|" tt "|" ta "|" ts }' /tmp/disc.out | sed 's/ *|/|/g; s/ *$//' >/tmp/disc.tab
echo "entries (subtype|subnqn|trtype|traddr|trsvcid):"
sed 's/^/  /' /tmp/disc.tab
for nqn in $EXP_NQNS; do
    want="nvme subsystem|$nqn|tcp|$EXP_TRADDR|$EXP_TRSVCID"
    grep -qxF "$want" /tmp/disc.tab || fail "no entry '$want'"
    echo "ok: $want"
done
# nothing unexpected: every NVMe subsystem entry is one of EXP_NQNS
for nqn in $(awk -F'|' '$1 == "nvme subsystem" { print $2 }' /tmp/disc.tab); do
    case " $EXP_NQNS " in *" $nqn "*) ;; *) fail "unexpected subsystem $nqn in the log" ;; esac
done
# and the discovery controller is gone again (nvme discover disconnects it)
sleep 0.2
[ -z "$(ctrl_of nqn.2014-08.org.nvmexpress.discovery)" ] || fail "discovery controller left behind"
echo "discover: OK"
