#!/usr/bin/env bash
# The answer-quality table of docs/benchmarks.md (Answers): all XQuAD questions, the default generator, k=5, four ways:
#   (a) rag's default RAG, (b) closed book, (c) the gold paragraph as the only source,
#   (d) LangChain's standard local RAG (examples/benchmarks/qa_langchain.py, in two shards).
# Two lanes of one thread each, so a 2-core machine is kept busy and every run gets a core:
#   lane 1: (a), (b), (c) one after another; lane 2: (d)'s two shards one after another.
# About 100 minutes on a 2-core CPU. Results (JSON) and per-question rows go to OUT; the last lines
# printed are the table's figures.
#
#   bash examples/benchmarks/xquad_table.sh ../shared/data/xquad-en/xquad.en.json /tmp/xquad
set -euo pipefail
squad=$(realpath "${1:?usage: xquad_table.sh SQUAD.json OUT_DIR}")
out=$(mkdir -p "${2:?usage: xquad_table.sh SQUAD.json OUT_DIR}" && realpath "$2")
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

model=$(python -c 'from rag.generation import packaged_default, resolve_model_path; print(resolve_model_path(str(packaged_default())))')
half=$(python -c "import json, sys; print(sum(len(p['qas']) for a in json.load(open(sys.argv[1]))['data'] for p in a['paragraphs']) // 2)" "$squad")

rag_qa() {  # name, then extra flags
  local name=$1; shift
  rag eval qa --squad "$squad" --generate -k 5 --store "$out/store-$name" --out "$out/$name" --json "$@" \
    > "$out/$name.json" 2> "$out/$name.err"
}
lane_rag() { rag_qa a && rag_qa b --context none && rag_qa c --context gold; }
lane_langchain() {
  local peer=(python examples/benchmarks/qa_langchain.py --squad "$squad" --model "$model" -k 5 --max-new-tokens 48)
  "${peer[@]}" --limit "$half" --out "$out/d1-rows.json" > "$out/d1.json" 2> "$out/d1.err"
  "${peer[@]}" --offset "$half" --out "$out/d2-rows.json" > "$out/d2.json" 2> "$out/d2.err"
  python examples/benchmarks/qa_langchain.py --merge "$out/d1-rows.json" "$out/d2-rows.json" > "$out/d.json"
}
lane_rag & rag_lane=$!
lane_langchain
wait "$rag_lane"

python - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rows = {}
for name in "abc":
    r = json.load(open(f"{out}/{name}.json"))
    rows[name] = (r["questions"], r["metrics"]["exact_match"], r["metrics"]["f1"], r["answer_latency_ms"])
d = json.load(open(f"{out}/d.json"))
rows["d"] = (d["questions"], d["exact_match"], d["f1"], d["answer_latency_ms"])
for name, (n, em, f1, ms) in rows.items():
    print(f"({name}) {n} questions: EM {em:.3f}  F1 {f1:.3f}  answer p50 {ms['p50'] / 1000:.2f} s  p95 {ms['p95'] / 1000:.2f} s")
f1 = {name: row[2] for name, row in rows.items()}
ratio = lambda x, y: f"{x / y:.2f}x" if y else "n/a (F1 0)"  # noqa: E731
print(f"(a)/(d) F1 {ratio(f1['a'], f1['d'])}, (a)/(b) {ratio(f1['a'], f1['b'])}, (c)-(a) {f1['c'] - f1['a']:.3f}")
EOF
