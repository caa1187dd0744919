# Sourced by the other scripts. Sets PYTHON: the interpreter bnstudy is installed in. That is
# the active virtual environment's python, else .venv in the checkout (made here when missing):
# Debian's own python3 refuses system-wide pip installs (PEP 668), so we never do one.
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    PYTHON=python
  else
    if [ ! -x .venv/bin/python ]; then
      if ! python3 -m venv .venv 2>/dev/null; then
        # Debian ships venv's pip bootstrap separately (python3-venv).
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
          rm -rf .venv
          apt-get update -qq
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
          python3 -m venv .venv
        else
          echo "error: python3 -m venv failed; install python3-venv (Debian/Ubuntu) or" \
               "activate a virtual environment, then rerun" >&2
          exit 1
        fi
      fi
    fi
    PYTHON=.venv/bin/python
  fi
fi
export PYTHON
