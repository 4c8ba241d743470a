# The swaplab image: the CLI plus everything a worker needs to run the embedded lab
# (QEMU TCG, nfs-ganesha in user space, the node image builder).
FROM debian:12
WORKDIR /opt/swaplab
COPY . .
RUN scripts/setup && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/swaplab/.venv/bin:$PATH \
    SWAPLAB_CACHE=/var/cache/swaplab \
    SWAPLAB_RESULTS=/var/lib/swaplab/results
ENTRYPOINT ["swaplab"]
CMD ["--help"]
