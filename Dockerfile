# One image for both roles of cosmos-etcd:
#   the etcd v3 server   docker run IMAGE                    (CMD: `serve` on 0.0.0.0:2379)
#   the operator         docker run IMAGE operator --help    (the Helm chart runs it this way)
# The builder makes the wheel and installs it with its dependencies into a virtual environment;
# the final stage gets only that environment: no compiler, no pip, no caches, no source tree.
# tests/packaging/test_image.py builds the same wheel from the same files (there is no container
# engine in CI) and runs the ENTRYPOINT and CMD below from a fresh virtual environment.

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shim/ shim/
COPY operator/ operator/
# The venv gets no pip of its own: the builder's pip installs into it (--python).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/cosmos-etcd \
 && pip --python /opt/cosmos-etcd/bin/python install /wheels/*.whl

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="cosmos-etcd" \
      org.opencontainers.image.description="An etcd v3 server on Azure Cosmos DB (cosmos-etcd serve) and the Kubernetes operator that runs it (cosmos-etcd operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"
# pip is of no use at run time; the data directory belongs to the unprivileged user.
RUN python -m pip uninstall --yes --quiet --root-user-action=ignore pip setuptools wheel \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/cosmos-etcd
COPY --from=builder /opt/cosmos-etcd /opt/cosmos-etcd
ENV PATH=/opt/cosmos-etcd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /var/lib/cosmos-etcd
EXPOSE 2379
ENTRYPOINT ["cosmos-etcd"]
# The embedded store in the image's data directory, reachable through a published port
# (`docker run -p 2379:2379 -v etcd-data:/var/lib/cosmos-etcd IMAGE`).
CMD ["serve", "--name", "cosmos-etcd", "--data-dir", "/var/lib/cosmos-etcd", \
     "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://localhost:2379"]
