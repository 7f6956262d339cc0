"""The station as a GB/T 28181 platform: devices register to it over SIP, it keeps track of them, queries
them and opens media sessions (edge.gb28181.platform). The codecs and the SIP transport are in
drivers/gb28181; receiving and converting media is edge.gb28181.media and edge.gb28181.convert."""
