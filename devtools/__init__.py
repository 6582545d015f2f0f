"""Development and demonstration tools that never load on a gateway: the live demo, the private
Mosquitto, the serial simulators, the MicroPython unix-port node runner and the smoke classifier's
training (`wardgate demo`, `wardgate train-smoke`). They may import every other package."""
