"""onnxruntime profile of the shipped int8 file: kernel time by op type, by node, and grouped by model part and
head level, one thread, random input of H x W (benchmarks/RESULTS.md, "Where the int8 network time goes").

    python experiments/profile_int8.py 512 640
"""
import onnxruntime as ort, numpy as np, json, collections, sys, time
so = ort.SessionOptions(); so.intra_op_num_threads=1; so.inter_op_num_threads=1
so.enable_profiling=True; so.profile_file_prefix="/tmp/profile_int8"
s = ort.InferenceSession("srn/assets/srn_mobilenet_v2.int8.onnx", so, providers=["CPUExecutionProvider"])
for i in s.get_inputs(): print(i.name, i.shape, i.type)
h,w = int(sys.argv[1]), int(sys.argv[2])
x = np.random.rand(1,3,h,w).astype(np.float32)
feeds={s.get_inputs()[0].name:x}
for _ in range(3): s.run(None, feeds)
t=time.perf_counter()
for _ in range(10): s.run(None, feeds)
print("ms", (time.perf_counter()-t)/10*1000)
f = s.end_profiling()
ev = json.load(open(f))
byop=collections.Counter(); bynode=collections.Counter()
for e in ev:
    if e.get("cat")=="Node" and e["name"].endswith("_kernel_time"):
        byop[e["args"]["op_name"]]+=e["dur"]; bynode[e["name"]]+=e["dur"]
tot=sum(byop.values())
for k,v in byop.most_common(15): print(f"{k:30s} {v/tot*100:5.1f}%")
print("---")
for k,v in bynode.most_common(25): print(f"{k[:80]:80s} {v/tot*100:5.1f}%")
print("--- groups")
import re
g=collections.Counter()
for k,v in bynode.items():
    parts=k.split("/")
    if len(parts)>2 and parts[1]=="model":
        grp=parts[2]
        if grp=="head":
            m=re.search(r"_(\d+)$", parts[4]) if len(parts)>4 else None
            lvl = m.group(1) if m else "0"
            grp=f"head L{lvl}"
        elif grp=="backbone":
            grp="backbone"
    else: grp="other:"+ (parts[1] if len(parts)>1 else k[:20])
    g[grp]+=v
for k,v in g.most_common(): print(f"{k:30s} {v/tot*100:5.1f}%")
