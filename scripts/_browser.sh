# Sourced by scripts/test.sh: make sure a Chromium for the browser tests is installed.
# Playwright's own browser download needs the internet; Debian's and Ubuntu's chromium
# package does not. Where it cannot be installed, the browser tests skip with a reason,
# except in CI (CI=true), where they fail.
BOOK_CHROMIUM=${BOOK_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$BOOK_CHROMIUM" ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=no; fi
    if [ "$SUDO" != no ]; then
        echo "==> installing Debian's chromium for the browser tests"
        $SUDO apt-get install -y -q chromium >/dev/null 2>&1 ||
            { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } ||
            echo "    could not install chromium with apt-get"
        BOOK_CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
    fi
fi
export BOOK_CHROMIUM
