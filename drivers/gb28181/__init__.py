"""GB/T 28181 wire protocols: SIP, digest, MANSCDP, SDP, RTP, PS (pure codecs) and the SIP transport."""
