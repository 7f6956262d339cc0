"""MQTT, shared by the station and the central: the asyncio client over paho-mqtt (`client`) and the
EMQX file-transfer codec and segment plan (`filetransfer`, `segments`)."""
