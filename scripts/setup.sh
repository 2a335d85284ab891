#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the CPU build of torch, then the project and its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned: this version is the local CPU wheel; an unpinned torch pulls several GB of CUDA packages
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
# TensorRT's type stubs, for checking the fake tensorrt of tests/test_build_trt.py against the real API. --no-deps:
# the stubs require tensorrt itself, whose libraries come only from NVIDIA's index (not installable here).
python -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
# ffprobe (Debian's ffmpeg) lets the tests check the overlay video with a second reader; optional, so a machine
# without root or apt still sets up
if ! command -v ffprobe >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null) \
        || echo "setup.sh: could not install ffmpeg; the tests will check the overlay with PyAV only" >&2
fi
# The live-source tests: GStreamer's RTSP server, run by the system python (tests/rtsp_server.py: appsrc, the RTP
# payloaders and an audio-only mount), Xvfb for the demos' window, and Chromium for the microscope page's browser
# test (tests/test_serve.py: Playwright drives /usr/lib/chromium/chromium; never `playwright install`, which
# downloads a browser). Installed only when missing, as root with apt; without them those tests skip and say why
# (and fail under .ci/run, which sets ARR_COC_REQUIRE_LIVE=1).
live_packages=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good xvfb chromium)
live_missing=()
for p in "${live_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || live_missing+=("$p")
done
if [ ${#live_missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${live_missing[@]}" >/dev/null) \
            || echo "setup.sh: could not install ${live_missing[*]}; the RTSP, window and browser tests will skip" >&2
    else
        echo "setup.sh: ${live_missing[*]} missing (needs root and apt-get); the RTSP, window and browser tests will skip" >&2
    fi
fi
# opencv-python (with a GUI, for the demos' window) and opencv-python-headless both install the cv2 folder: with
# both, whichever was installed last owns its files. A venv made before the project moved to opencv-python may
# hold both: keep only opencv-python (uninstalling one removes the shared files, so reinstall the other).
if python -m pip show opencv-python-headless >/dev/null 2>&1; then
    cv2_version=$(python -c "import importlib.metadata as m; print(m.version('opencv-python'))")
    python -m pip uninstall --quiet -y opencv-python-headless
    python -m pip install --quiet --force-reinstall --no-deps "opencv-python==${cv2_version}"
fi
