#!/usr/bin/env python3
# Summarize bench/pingpong/run.sh output: median p50 / best min / median avg (QD1), median / best ops/s (QD>1).
# usage: summarize.py RESULTS.txt [kind,kind,...]
import sys,re,statistics as st,collections
d=collections.defaultdict(list)
for line in open(sys.argv[1]):
    f=line.split()
    if len(f)<3 or '=' not in line: continue
    kind=f[0]; kv=dict(x.split('=',1) for x in f[1:] if '=' in x)
    key=(kv['req'],kv['resp'],kv['mode'],kv['qd'])
    d[(key,kind)].append(kv)
keys=sorted(set(k for k,_ in d), key=lambda k:(int(k[3]),k[0],k[1],k[2]))
kinds=sys.argv[2].split(',') if len(sys.argv)>2 else ['c','rust','engine-poll','engine-interrupt']
for k in keys:
    row=[]
    for kind in kinds:
        v=d.get((k,kind))
        if not v: row.append('-'); continue
        if k[3]=='1':
            row.append("p50 %.1f / min %.1f / avg %.1f"%(st.median(float(x['p50_us']) for x in v), min(float(x['min_us']) for x in v), st.median(float(x['avg_us']) for x in v)))
        else:
            row.append("%.0f k (best %.0f k)"%(st.median(float(x['ops/s']) for x in v)/1e3, max(float(x['ops/s']) for x in v)/1e3))
    print("| %s→%s QD%s client %s | "%(k[0],k[1],k[3],k[2]) + " | ".join(row)+" |")
