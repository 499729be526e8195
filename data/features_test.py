import dataclasses

from covid_cxr.data import features
from covid_cxr.serving.testing import _instances


def test_an_example_carries_every_field_of_its_record_under_its_own_name():
    # Every value distinct: a field written under another's name, or as its default, shows.
    record = features.Record(png=b"\x89PNG not decoded here", label="covid", label_index=1,
                             patient_id="0123456789abcdef", group="fedcba9876543210", source="cohen", view="AP",
                             sex="F", age=58)
    [example] = _instances([record.to_example().SerializeToString()])
    assert example == {
        features.IMAGE: [record.png], features.LABEL: [b"covid"], features.LABEL_INDEX: [1],
        features.PATIENT_ID: [b"0123456789abcdef"], features.GROUP: [b"fedcba9876543210"],
        features.SOURCE: [b"cohen"], features.VIEW: [b"AP"], features.SEX: [b"F"], features.AGE: [58]}
    assert len(example) == len(dataclasses.fields(features.Record))  # nothing else from a source's headers


def test_each_task_gives_a_finding_only_to_the_class_it_names_and_covid_is_the_positive_class():
    for task in features.TASKS.values():
        assert task.classes[task.positive_index] == features.COVID
        assert set(task.finding_to_class.values()) == set(task.classes)
        for finding, cls in task.finding_to_class.items():
            # A class named like a finding takes that finding only: other_opacity is not pneumonia.
            assert cls not in features.FINDINGS or cls == finding, (task.name, finding, cls)
    noncovid = features.get_task("covid-vs-noncovid")
    assert {f for f in features.FINDINGS if noncovid.class_of(f) == "noncovid"} == set(features.FINDINGS) - {features.COVID}
