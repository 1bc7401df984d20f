#!/bin/sh
# Install the Claude Code CLI binary bundled in the claude-agent-sdk wheel.
# Usage: install-claude.sh SDK_VERSION EXPECTED_CLAUDE_CODE_VERSION
set -eu
sdk_version="$1"
expected="$2"
vendor=/tmp/vendor

wheel=$(ls "$vendor"/claude_agent_sdk-"$sdk_version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "install-claude: no wheel in vendor/, downloading claude-agent-sdk==$sdk_version with pip"
    python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        -d "$vendor" "claude-agent-sdk==$sdk_version"
    wheel=$(ls "$vendor"/claude_agent_sdk-"$sdk_version"-*.whl | head -n 1)
fi
echo "install-claude: using $(basename "$wheel")"
python3 - "$wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    with wheel.open("claude_agent_sdk/_bundled/claude") as src, open("/usr/local/bin/claude", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
chmod 0755 /usr/local/bin/claude
got=$(HOME=/tmp /usr/local/bin/claude --version | awk '{print $1}')
if [ "$got" != "$expected" ]; then
    echo "install-claude: expected Claude Code $expected, the wheel has $got" >&2
    exit 1
fi
echo "install-claude: Claude Code $got installed"
