"""MQTT: the asyncio client over paho-mqtt (`client`), shared by the station and the central."""
