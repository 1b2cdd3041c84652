# Sourced by scripts/book.sh and scripts/test.sh: install the Debian packages they need,
# when apt-get can. need_chromium: Chromium, which prints the book's PDF and runs the
# browser tests (Playwright's own browser download needs the internet; Debian's and
# Ubuntu's chromium package does not). need_slurm: SLURM with munge, for the test that
# submits chapter 09's batch file to a one-node cluster. Where they cannot be installed,
# the PDF and those tests are skipped with a reason, except in CI (CI=true), where that
# is an error.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then return 0; fi
    local sudo
    if [ "$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else return 0; fi
    echo "==> installing Debian's $*"
    $sudo apt-get install -y -q "$@" >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$@" >/dev/null 2>&1; } ||
        echo "    could not install $* with apt-get"
}
need_chromium() {
    BOOK_CHROMIUM=${BOOK_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
    if [ -z "$BOOK_CHROMIUM" ]; then
        apt_install chromium
        BOOK_CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
    fi
    export BOOK_CHROMIUM
}
need_slurm() {
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
        apt_install slurm-wlm munge
    fi
}
