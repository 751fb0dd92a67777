# One image for skydns, kube2sky and the kubeemu API emulator (docker-compose.yml picks the
# program with `command:`). etcd is NOT in this image: it runs from the official etcd image.
#
#   docker build -t skydns-kube .
#   docker run --rm skydns-kube                  # skydns --help
#   docker run --rm skydns-kube kube2sky --help
#
# Every dependency has a cp311 manylinux wheel, so the slim base needs no compiler.

# ---- build stage: install the project and its dependencies into /install ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# setup.cfg reads README.md (long_description); pyproject.toml selects setuptools.
COPY pyproject.toml setup.cfg README.md ./
COPY skydns ./skydns
COPY kube2sky ./kube2sky
COPY kubeemu ./kubeemu
RUN pip install --no-cache-dir --prefix=/install .

# ---- runtime stage ----
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /install /usr/local

# Unprivileged user; numeric USER so runtimes can verify runAsNonRoot without /etc/passwd.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin app

WORKDIR /app
# Seed manifests for the emulator: docker-compose.yml runs
#   kubeemu --seed /app/manifests/examples/demo.yaml
COPY manifests/examples /app/manifests/examples

USER 10001

# DNS (53 in a pod; docker-compose.yml uses 1053 because the user is not root),
# skydns /healthz, kube2sky /healthz + /readiness.
EXPOSE 53/udp 53/tcp 1053/udp 1053/tcp 8080 8081

# No ENTRYPOINT: compose (or `docker run IMAGE PROGRAM ...`) chooses the program.
CMD ["skydns", "--help"]
