"""The GB/T 28181 platform service: registrar, queries, downloads and live sessions."""
