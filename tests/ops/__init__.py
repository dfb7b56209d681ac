"""Operations: metrics, alerts, doctor, capacity."""
