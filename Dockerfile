# metafs: namenode, indexer, mount and command-line tools in one image, with every runtime
# extra at the versions of deploy/constraints-image.txt.
#   docker build -t metafs .
#   docker run --rm metafs metafs --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md deploy/constraints-image.txt ./
COPY metafs ./metafs
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints-image.txt \
      ".[postgres,s3,fuse,elasticsearch,fsspec,ops,provenance]"

FROM python:3.11-slim
# pg_dump/pg_restore for `metafs backup` on PostgreSQL; fuse3 for `metafs mount`
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl && rm -rf /wheels \
 && useradd --system --home /var/lib/metafs --create-home metafs
USER metafs
WORKDIR /var/lib/metafs
ENV METAFS_CONFIG=/etc/metafs/config.toml
EXPOSE 7420 9464
CMD ["metafs", "serve", "--listen", "0.0.0.0:7420"]
