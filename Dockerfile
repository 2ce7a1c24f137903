# Fraisier reconciler image: a virtualenv built in one stage, copied into a slim runtime stage.
#   docker build -t fraisier .
#   docker run -d --name fraisier -v fraisier-state:/var/lib/fraisier -v /srv/fleet:/config:ro \
#     -p 127.0.0.1:9464:9464 fraisier daemon --repo /config --listen 0.0.0.0:9464
# Offline builds: put wheels of every dependency in ./wheels (pip wheel -w wheels .) and pass
#   --build-arg PIP_INSTALL_ARGS="--no-index --find-links /src/wheels"
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Skipped when the base already carries the packages (the CI base image is made from these very
# Debian packages, and no registry or mirror is needed then).
RUN if ! dpkg -s python3 python3-venv >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi
ARG PIP_INSTALL_ARGS=""
COPY . /src
RUN python3 -m venv /opt/fraisier \
 && /opt/fraisier/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_ARGS} /src \
 # pip and setuptools are not needed at run time: smaller image, less to patch
 && /opt/fraisier/bin/pip uninstall -y -q pip setuptools \
 && find /opt/fraisier -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/fraisier/bin/python -m compileall -q /opt/fraisier/lib

FROM ${BASE}
# git reads the config repo; the ssh client reaches bare-metal Targets (and git over SSH).
RUN if ! dpkg -s python3 git openssh-client ca-certificates >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 git openssh-client \
      ca-certificates && rm -rf /var/lib/apt/lists/*; fi \
 && groupadd --system --gid 10001 fraisier \
 && useradd --system --uid 10001 --gid fraisier --home-dir /var/lib/fraisier --no-create-home \
      --shell /usr/sbin/nologin fraisier \
 # owner-only, like the unit's StateDirectoryMode: the database and clones hold secrets
 && install -d -o fraisier -g fraisier -m 0700 /var/lib/fraisier \
 # A config repo bind-mounted from the host is owned by another uid; git would refuse to read
 # it ("dubious ownership"). This container runs one user and reads only what it is given.
 && git config --system --add safe.directory '*'
COPY --from=build /opt/fraisier /opt/fraisier
ENV PATH=/opt/fraisier/bin:$PATH \
    RECONCILER_STATE_DIR=/var/lib/fraisier \
    PYTHONUNBUFFERED=1 \
    FRAISIER_HEALTH_URL=http://127.0.0.1:9464/healthz
# SQLite database, git mirror, spec cache and releases: keep them across container upgrades.
VOLUME ["/var/lib/fraisier"]
WORKDIR /var/lib/fraisier
USER 10001:10001
EXPOSE 9464
# No curl in the image: the venv's Python asks /healthz (set FRAISIER_HEALTH_URL with --listen).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['FRAISIER_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["reconciler"]
CMD ["daemon", "--repo", "/config", "--listen", "0.0.0.0:9464"]
