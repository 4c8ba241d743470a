# The swaplab image: the CLI plus everything a worker needs to run the embedded lab
# (QEMU TCG, nfs-ganesha in user space, the node image builder), and the stack's extras
# (Flower; beat health-checked by remote control) for docker-compose.yml. One image, several
# services: only the lab worker's (ganesha's) is given DAC_READ_SEARCH; kernel builds run in
# the builder service, without it. Nothing here sets file capabilities.
FROM debian:12
WORKDIR /opt/swaplab
COPY . .
RUN scripts/setup \
    && .venv/bin/pip install -q --no-cache-dir -e '.[stack]' \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/swaplab/.venv/bin:$PATH \
    SWAPLAB_CACHE=/var/cache/swaplab \
    SWAPLAB_RESULTS=/var/lib/swaplab/results
# 9464: the worker's Prometheus exporter (scraped over the compose network, not published);
# 5555: Flower.
EXPOSE 9464 5555
ENTRYPOINT ["swaplab"]
CMD ["--help"]
