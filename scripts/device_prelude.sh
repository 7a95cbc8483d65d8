# Sourced by the scripts that run on the GPU machine (gpu_paper.sh, gpu_campaign.sh): Tiny
# ImageNet from the parts that ../shared/tools/device-data.sh cut, carried into .device-data/ by
# the calls before (the whole archive: a record's data fingerprint is the archive's, so a packed
# subset would make every run a new one), checked against its sha256 and exported as
# VITMIM_DATA; the image cache beside the parts, never under $OUT. Needs say() and PY.
# VITMIM_DATA already set (a dry run on a CPU): used as it is.
PARTS=${PARTS_DIR:-$PWD/.device-data}
export VITMIM_CACHE=${VITMIM_CACHE:-$PARTS/cache}  # 1.2 GB for all 200 classes
if [[ -z ${VITMIM_DATA:-} ]]; then
    zip=$PARTS/tiny-imagenet-200.zip
    if [[ ! -f $zip ]]; then
        compgen -G "$PARTS/tin.part-[0-9][0-9]" >/dev/null || {
            say "no $PARTS/tin.part-NN: carry the parts of device-data.sh first"; exit 2; }
        cat "$PARTS"/tin.part-[0-9][0-9] > "$zip.tmp" && mv "$zip.tmp" "$zip"
    fi
    (cd "$PARTS" && sha256sum -c tin.sha256) || { say "checksum mismatch: $zip"; rm -f "$zip"
                                                   exit 2; }
    export VITMIM_DATA=$zip
fi
say "data $VITMIM_DATA"

# the machine is offline: vitmim without its dependencies (the machine has torch, timm, ...),
# installed so that manifests name its version; where it is installed already, kept
install_vitmim() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader | tee "$1/device.txt"
    $PY -c "import importlib.metadata as m; m.version('vitmim')" 2>/dev/null \
        || $PY -m pip install -q --no-deps --no-build-isolation -e . \
        || say "pip install failed; going on with PYTHONPATH=src"
}
