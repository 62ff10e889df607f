# metafs: namenode, indexer and command-line tools in one image.
#   docker build -t metafs .
#   docker run --rm metafs metafs --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY metafs ./metafs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres,s3,search,elasticsearch,fsspec,ops]"

FROM python:3.11-slim
# pg_dump/pg_restore for `metafs backup` on PostgreSQL; fuse3 for `metafs mount`
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --system --home /var/lib/metafs --create-home metafs
USER metafs
WORKDIR /var/lib/metafs
ENV METAFS_CONFIG=/etc/metafs/config.toml
EXPOSE 7420 9464
CMD ["metafs", "serve", "--listen", "0.0.0.0:7420"]
