# Alice Explorer on a CUDA-capable base: PyPI's torch==2.13.0 Linux wheel bundles the CUDA runtime, so the
# NVIDIA container runtime (docker run --gpus all) is all the host needs.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . .
RUN pip install -r requirements.txt

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health').read() != b'ok')"
# Inside the container the app must listen on all interfaces; outside it, it binds to 127.0.0.1 by default.
CMD ["streamlit", "run", "app/main.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
