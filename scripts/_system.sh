# Sourced by scripts/test.sh: install the Debian packages some tests need, when apt-get
# can: Chromium for the browser tests (Playwright's own browser download needs the
# internet; Debian's and Ubuntu's chromium package does not), and SLURM with munge for
# the test that submits chapter 09's batch file to a one-node cluster. Where they cannot
# be installed, those tests skip with a reason, except in CI (CI=true), where they fail.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then return 0; fi
    local sudo
    if [ "$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else return 0; fi
    echo "==> installing Debian's $* for the tests"
    $sudo apt-get install -y -q "$@" >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$@" >/dev/null 2>&1; } ||
        echo "    could not install $* with apt-get"
}
BOOK_CHROMIUM=${BOOK_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$BOOK_CHROMIUM" ]; then
    apt_install chromium
    BOOK_CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
fi
export BOOK_CHROMIUM
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    apt_install slurm-wlm munge
fi
